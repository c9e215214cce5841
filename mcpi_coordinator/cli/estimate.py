"""``mcpi estimate``: estimate π on a pool of workers and report it (text or JSON).

Its parser lives apart (``cli.estimate_parser``), so that parsing imports none of what a
run needs: this module is imported by the parser's handler, once the line has parsed.

Exit codes: 0 an estimate was reported (also after an early stop), 1 the run failed or
the --plot could not be written (one line on stderr says why; an estimate is still
printed first), 2 bad arguments, 130/143/129 stopped by Ctrl-C/SIGTERM/SIGHUP.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any, Final

import trio

from mcpi_coordinator import arguments as cli_args
from mcpi_coordinator.cli import plots, progress, runs, signals, text
from mcpi_coordinator.cli.estimate_parser import MAX_TOTAL_POINTS
from mcpi_coordinator.cli.exit_codes import ExitCode
from mcpi_coordinator.cli.logging import configure_logging
from mcpi_coordinator.errors import McpiError
from mcpi_coordinator.launch import capacity, remote, slurm
from mcpi_coordinator.launch.local import adopting_orphans, default_worker_command, spawn_worker
from mcpi_coordinator.launch.redact import shown_command
from mcpi_coordinator.pool.stats import SlotState
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_coordinator.run.checkpoint import Checkpoint, CheckpointRefused
from mcpi_coordinator.run.estimate import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_POINTS,
    EstimateResult,
    chunk_count,
    pi_statistics,
    resumed_prefix,
    run_estimate,
)
from mcpi_coordinator.run.parts import part_json
from mcpi_worker.constants import CACHE_WARMED_BY_PARENT
from mcpi_worker.kernels import DEFAULT_KERNEL

PROG = "mcpi estimate"

MAX_START_ATTEMPTS: Final[int] = 3
"""Failed starts in a row before a worker slot is dropped (the pool's default, said
here because the start-up line counts the attempts)."""

def worker_command(worker_cmd: str | None, index: int) -> list[str]:
    """The argument vector that starts worker ``index``: ``--worker-cmd`` shell-split,
    or this interpreter's ``mcpi-worker``. Raises ``RemoteConfigError`` (a
    ``ValueError``) with one clear line for an unusable one."""
    if worker_cmd is None:
        return default_worker_command()
    what = cli_args.named(worker_cmd, "--worker-cmd")
    return remote.substitute_index(remote.split_command(worker_cmd, what), index)


def _part_problem(args: argparse.Namespace) -> str | None:
    """A --part that cannot be: with --target-error, or more parts than chunks."""
    if args.part is None:
        return None
    if args.target_error is not None:
        return (
            "--part and --target-error do not mix: the target stops the whole run's prefix of "
            "chunks, which no part sees; run the parts to their end (or drop --part)"
        )
    if args.resume is not None:
        return None  # the checkpoint's parameters decide; a --part that differs is refused then
    points = DEFAULT_POINTS if args.points is None else args.points
    chunks = chunk_count(points, DEFAULT_CHUNK_SIZE if args.chunk_size is None else args.chunk_size)
    if args.part.of > chunks:
        return f"--part {args.part}: a run of {chunks:,} chunks has at most {chunks:,} parts"
    return None


def run(args: argparse.Namespace, *, machine: capacity.MachineLimits | None = None) -> int:
    """``mcpi estimate``; ``machine`` stands for this machine's limits (tests)."""
    machine = capacity.MachineLimits.here() if machine is None else machine
    problem = _part_problem(args) or runs.fill_target_budget(args, MAX_TOTAL_POINTS) or _check_arguments(args, machine)
    if problem is not None:
        args.command_parser.error(problem)
    if args.plot is not None:
        try:
            plots.ensure_available()  # fail now, not after the run
        except McpiError as error:
            text.say(PROG, f"error: {error}")
            return ExitCode.FAILURE
    level = args.log_level or ("error" if args.quiet else "warning")
    configure_logging(level, args.log_format)
    try:
        prepared = runs.prepare(args)  # the run's options, its seed, its checkpoint (locked)
    except CheckpointRefused as error:
        text.say(PROG, f"error: {error}")
        return ExitCode.USAGE
    _drop_unusable_slots(args)  # a resumed run's points are known from its file only now
    if not args.capacity_checked:  # a resumed run's kernel is known from its file only now
        problem = _capacity_problem(args, machine)
        if problem is not None:
            prepared.close()
            args.command_parser.error(problem)
    seed, seed_drawn = prepared.seed, prepared.seed_drawn
    if not args.quiet:
        _hint_idle_workers(args)
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
        return ExitCode.FAILURE
    if outcome is None:
        return _interrupted(seed, prepared)
    if args.json:
        print(json.dumps(result_json(outcome)))
    else:
        print_result(outcome, seed_drawn=seed_drawn)
    if args.plot is not None:  # drawn from the per-chunk counts the run kept anyway
        try:
            picture = plots.plot_estimate(outcome, args.plot)
        except McpiError as error:
            text.say(PROG, f"error: {error} (the estimate above is complete)")
            return ExitCode.FAILURE
        if not args.quiet:
            text.say(PROG, f"wrote {picture.path} ({picture.width}×{picture.height} px)")
    return ExitCode.OK


@contextlib.contextmanager
def _cache_warmed_here(args: argparse.Namespace) -> Iterator[None]:
    """While the run lasts, its workers leave numba's cache to us (``CACHE_WARMED_BY_PARENT``
    in the environment they inherit), and a cold cache is warmed by a process of ours,
    started before orphans are adopted: a worker's own warming process is its orphan once
    it exits, and would be ended with the run (``adopting_orphans``), before the cache is
    warm. Ours is this process's child, not a worker's, so it is spared, and it outlives
    the run at the lowest priority until the cache is warm (``kernels.warm``)."""
    if args.workers and (args.kernel or DEFAULT_KERNEL) == "numpy":
        from mcpi_worker import kernel_policy
        from mcpi_worker.kernels import warm

        try:
            uses_numba = kernel_policy.policy_from_environment() is not kernel_policy.Policy.NUMPY
        except kernel_policy.KernelConfigError:
            uses_numba = False  # the workers refuse it, and say why
        if uses_numba and not warm.NumbaCache().is_warm():
            warm.start_warming()
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
    return ExitCode.for_signal(signals.stopped_by())


def _check_arguments(args: argparse.Namespace, machine: capacity.MachineLimits) -> str | None:
    if args.workers is None:
        args.workers = 0 if args.slurm else (os.cpu_count() or 1)
    try:
        worker_command(args.worker_cmd, 0)  # checked even when every worker is remote
        nodes = slurm.allocation_nodes(os.environ) if args.slurm else ()
        slots = [] if args.slurm and not (args.workers or args.host or args.hosts_file) else (
            remote.slots_from_args(args, lambda i: worker_command(args.worker_cmd, i))
        )
    except (remote.RemoteConfigError, slurm.SlurmError) as error:
        return str(error)
    # One step per node, one connection each, all the node's CPUs as its jobs.
    worker = worker_command(args.worker_cmd, 0)
    args.slots = slots + [
        remote.WorkerSlot(tuple(slurm.srun_worker_argv(node, [*worker, "--jobs", str(node.cpus)])),
                          remote.HostSpec(node.name))
        for node in nodes
    ]
    args.starting_limits = remote.starting_limits(args.slots)
    args.asked_workers = len(args.slots)
    if args.resume is None:
        _drop_unusable_slots(args)  # the machine need only hold the workers that will start
    # The kernel that will run: --kernel, else a resumed checkpoint's (checked once the
    # file is open, so that nothing is created for a run refused here), else the default.
    args.capacity_checked = args.kernel is not None or args.resume is None
    return _capacity_problem(args, machine) if args.capacity_checked else None


def _capacity_problem(args: argparse.Namespace, machine: capacity.MachineLimits) -> str | None:
    """Whether the machine holds the planned slots' workers, counting each local one
    for the kernel the run will use (``args.kernel``; the default until it is set)."""
    kernel = DEFAULT_KERNEL if args.kernel is None else args.kernel
    starts = remote.concurrent_starts(args.starting_limits)
    return capacity.check_slots(args.slots, machine, max_starting=starts, kernel=kernel)


def _wait_for_every_worker(args: argparse.Namespace) -> bool:
    """Whether work waits for every worker's welcome. Local mcpi-workers are alike, so
    work starts at the first ready one. Other workers (--worker-cmd, ssh, Slurm) may
    differ in what they offer (kernels, sizes, hosts), and the pool refuses a request
    no worker can serve only once it knows what each offers; --verify sends its checks
    to another host when one is up, which it knows from the welcomes."""
    return bool(args.verify) or args.worker_cmd is not None or any(slot.host is not None for slot in args.slots)


def _drop_unusable_slots(args: argparse.Namespace) -> None:
    """Start no worker the run cannot use: a chunk is the least one worker computes, so
    slots beyond the run's chunks (counting each slot's jobs) would only start, idle
    and stop; on a few cores their start-up would also delay the ones that work. With
    --verify one more is kept, so that a check can run on another worker."""
    wanted = len(_streams(args)) + (1 if args.verify else 0)
    kept = jobs = 0
    for slot in args.slots:
        if jobs >= wanted:
            break
        kept += 1
        jobs += slot.jobs
    args.slots = args.slots[:kept]
    args.starting_limits = args.starting_limits[:kept]


def _hint_idle_workers(args: argparse.Namespace) -> None:
    """A chunk size above points/workers leaves workers with nothing to do: say so, and
    that only the workers the run can use are started."""
    chunks = len(_streams(args))
    points = _asked_points(args)
    asked: int = args.asked_workers
    if chunks < asked <= points:
        even = -(-points // asked)
        started = len(args.slots)
        text.say(
            PROG,
            f"note: {text.plural(chunks, 'chunk')} for {text.plural(asked, 'worker')}: starting "
            f"{started} ({asked - started} would be idle); --chunk-size {even:,} would use them all",
        )


def _streams(args: argparse.Namespace) -> range:
    """The chunks this coordinator counts: the run's, or its --part's (for options not
    known yet, a resumed run's before its file is open, their defaults)."""
    points = DEFAULT_POINTS if args.points is None else args.points
    total = chunk_count(points, DEFAULT_CHUNK_SIZE if args.chunk_size is None else args.chunk_size)
    return range(total) if args.part is None else args.part.streams(total)


def _asked_points(args: argparse.Namespace) -> int:
    points: int = args.points
    return points if args.part is None else args.part.points(points, args.chunk_size)


def _slot_names(args: argparse.Namespace) -> list[str]:
    """How each slot's worker is started, as a person would recognise it."""
    names = []
    for slot in args.slots:
        if slot.host is not None:
            names.append(f"ssh {slot.host.name}")
        elif args.worker_cmd is None:
            names.append("mcpi-worker")
        else:
            names.append(shown_command(slot.command))  # no secret in a warning
    return names


async def _estimate_until_stopped(
    args: argparse.Namespace, seed: int, checkpoint: Checkpoint | None
) -> EstimateResult | McpiError | None:
    """Run the estimate; on SIGINT, SIGTERM or SIGHUP cancel it (the pool stops and
    reaps every worker) and return None. Expected failures come back as a value, not
    an ExceptionGroup."""
    outcome: dict[str, EstimateResult | McpiError] = {}
    with trio.open_signal_receiver(*signals.STOP_SIGNALS) as stop_signals:
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
    line = progress.RunProgress(total=_asked_points(args), workers=len(args.slots))
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
        wait_for_all=_wait_for_every_worker(args),
        expected_points=-(-_asked_points(args) // len(args.slots)),  # each worker's share: a hint
    )
    failure: McpiError | None = None
    with progress.shown(line, shown):
        async with trio.open_nursery() as watching:
            watching.start_soon(
                lambda: progress.watch_pool(
                    pool, line, _slot_names(args), hosts=hosts,
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
    """The pool's life: start it, run the estimate, stop it (McpiErrors propagate bare)."""
    async with pool:
        line.start_sampling()
        if checkpoint is not None:  # what a resumed run counts already (not computed now)
            resumed = resumed_prefix(checkpoint)
            saved = sum(resumed.chunk_points(stream) for stream, _ in resumed.items())
            line.add_resumed(saved, resumed.points, resumed.inside)
        return await run_estimate(
            pool,
            on_chunk=lambda result, prefix: line.add(result.chunk.total_points, prefix.points, prefix.inside),
            started_at=started,
            **_run_options(args, seed, checkpoint),
        )


def _run_options(args: argparse.Namespace, seed: int, checkpoint: Checkpoint | None) -> dict[str, Any]:
    return {
        "points": args.points, "seed": seed, "chunk_size": args.chunk_size, "kernel": args.kernel,
        "max_time": args.max_time, "target_error": args.target_error, "checkpoint": checkpoint,
        "verify": args.verify, "part": args.part,
    }  # fmt: skip


# ------------------------------------------------------------------------ output


def estimate_fields(inside: int, points: int) -> dict[str, Any]:
    """The estimate's own JSON fields; ``mcpi combine`` writes a combined run's with these."""
    stats = pi_statistics(inside, points)
    return {"pi": stats.pi, "error": stats.error, "std_error": stats.std_error, "ci95": list(stats.ci95)}


def result_json(result: EstimateResult) -> dict[str, Any]:
    return {
        **estimate_fields(result.inside, result.points),
        "inside": result.inside,
        "points": result.points,
        "requested_points": result.requested_points,
        "seed": result.seed,
        "chunk_size": result.chunk_size,
        "chunks": result.chunks,
        "kernel": result.kernel,
        "workers": result.workers,
        "workers_retired": result.pool.retired,
        "workers_failed": len(result.pool.failures),
        "failures": [asdict(failure) for failure in result.pool.failures],
        "elapsed_s": result.elapsed_s,
        "points_per_s": result.points_per_s,
        "restarts": result.restarts,
        "stopped_early": result.stopped_early,
        "discarded_chunks": result.discarded_chunks,
        "repeat_points": None if result.repeat_command is None else result.points,
        "repeat_command": result.repeat_command,
        "part": _part_json(result),
        "target_error": result.target_error,
        "target_reached": result.target_reached,
        "checkpoint": result.checkpoint,
        "resumed_chunks": result.resumed_chunks,
        "saved_chunks": result.saved_chunks,
        **runs.verify_json(result),
        "per_worker": [asdict(worker) for worker in result.pool.workers],
        "hosts": remote.host_rows(result.pool.workers, result.elapsed_s),
    }


def _part_json(result: EstimateResult) -> dict[str, int] | None:
    if result.part is None:
        return None
    return part_json(result.part, chunk_count(result.requested_points, result.chunk_size))


def kernel_text(result: EstimateResult) -> str:
    """``numpy (numba-fused)``: the kernel asked for, and what counted its chunks as the
    workers said, with each one's share of the points when there were several
    (``numpy (numba-fused 70%, numpy 30%)``: a worker switches once it has counted enough)."""
    used = result.implementations
    total = sum(points for _, points in used)
    if not total or [name for name, _ in used] == [result.kernel]:
        return result.kernel
    if len(used) == 1:
        return f"{result.kernel} ({used[0][0]})"
    shares = ", ".join(f"{name} {points / total:.0%}" for name, points in used)
    return f"{result.kernel} ({shares})"


def rate_text(result: EstimateResult) -> str:
    """The run's points/s; a resumed run that computed nothing has none to show."""
    if result.points == result.resumed_points:
        return "none computed: every counted chunk came from the checkpoint"
    return text.rate(result.points_per_s)


def workers_summary(result: EstimateResult) -> str:
    """``2  (0 restarts)``, or ``1 of 3  (2 dropped: ...)``: who did the work, honestly.

    A dropped (retired) slot did nothing after its last failures and its failed starts
    are not restarts of a working worker, so they are counted apart. Work starts at the
    first ready worker, so a slot may also never have been ready (no welcome, so no
    host) when the run ended: it did nothing either.
    """
    stats = result.pool
    if stats.size == 0:
        return "none needed: every chunk came from the checkpoint"
    unready = [w for w in stats.workers if w.state != SlotState.RETIRED and w.host is None]
    working = [w for w in stats.workers if w.state != SlotState.RETIRED and w.host is not None]
    dropped = stats.size - len(working) - len(unready)
    restarts = sum(w.restarts for w in working)
    notes = [text.plural(restarts, "restart")]
    if dropped:
        failed_starts = sum(w.restarts + 1 for w in stats.workers if w.state == SlotState.RETIRED)
        notes.append(f"{dropped} dropped after {text.plural(failed_starts, 'failed start')}")
    if unready:
        notes.append(f"{len(unready)} not ready before the run ended")
    idle = sum(1 for w in working if w.chunks == 0)
    if idle and result.chunks < len(working):
        notes.append(f"{idle} idle: {text.plural(result.chunks, 'chunk')} to share")
    count = f"{len(working)}" if len(working) == stats.size else f"{len(working)} of {stats.size}"
    return f"{count}  ({'; '.join(notes)})"


def estimate_rows(inside: int, points: int) -> list[tuple[str, str]]:
    """The estimate's own rows (π, error, standard error, interval): ``mcpi combine``
    prints a combined run's with these very words and digits."""
    stats = pi_statistics(inside, points)
    return [
        ("π ≈", f"{stats.pi:.10f}"),
        ("error", f"{stats.error:+.3e}  (estimate − math.pi)"),
        ("standard error", f"{stats.std_error:.3e}"),
        ("95% CI", f"[{stats.ci95[0]:.8f}, {stats.ci95[1]:.8f}]"),
    ]


def points_text(points: int, chunks: int, chunk_size: int) -> str:
    return f"{points:,} in {text.plural(chunks, 'chunk')} of up to {chunk_size:,}"


def part_row(result: EstimateResult) -> tuple[str, str] | None:
    """What a --part run counted, and that its estimate is of that part alone."""
    if result.part is None:
        return None
    span = result.part_streams
    total = chunk_count(result.requested_points, result.chunk_size)
    return (
        "part",
        f"{result.part.index} of {result.part.of}: chunks {span.start:,}..{span.stop - 1:,} of {total:,} "
        f"({result.asked_points:,} of {result.requested_points:,} points); the estimate is of this part "
        f"alone: mcpi combine all {result.part.of} parts' --json for the run's",
    )


def print_result(result: EstimateResult, *, seed_drawn: bool) -> None:
    points = points_text(result.points, result.chunks, result.chunk_size)
    if result.stopped_early is not None:
        why = {"max_time": "--max-time reached", "target_error": "--target-error reached"}
        points += f"  (stopped early, {why[result.stopped_early]}; asked {result.asked_points:,})"
    drawn = f"  (drawn at random; --seed {result.seed} repeats this run)" if seed_drawn else ""
    part = part_row(result)
    rows = [
        *estimate_rows(result.inside, result.points),
        ("points", points),
        *([] if part is None else [part]),
        *run_rows(result),
        ("workers", workers_summary(result)),
        ("seed", f"{result.seed}{drawn}"),
        ("kernel", kernel_text(result)),
        ("wall time", f"{result.elapsed_s:.3f} s"),
        ("points/s", rate_text(result)),
    ]
    print(text.rows_text(rows))
    for line in (repeat_line(result), runs.checkpoint_line(result)):
        if line is not None:
            print(line)  # never wrapped: meant to be copied


def run_rows(result: EstimateResult) -> list[tuple[str, str]]:
    """A target that was not reached, plainly; what --verify did."""
    rows = []
    if result.target_error is not None and not result.target_reached:
        half = result.statistics.half_width
        when = "when --max-time came" if result.stopped_early == "max_time" else "after all --points"
        rows.append(("target error", f"{result.target_error:g} NOT reached (±{half:.3e} {when})"))
    verified = runs.verify_row(result)
    if verified is not None:
        rows.append(verified)
    return rows


def repeat_line(result: EstimateResult) -> str | None:
    """After an early stop, the plain command that gives this very count (a part that
    stopped early has none: it says how to finish it instead)."""
    if result.stopped_early is None:
        return None
    discarded = result.discarded_chunks
    chunks = "chunk that finished past them" if discarded == 1 else "chunks that finished past them"
    beyond = f"; {discarded:,} {chunks} not counted" if discarded else ""
    first = result.first_chunk
    counted = f"streams {first}..{first + result.chunks - 1}{beyond}"
    if result.repeat_command is None:
        end = result.part_streams.stop - 1
        return (
            f"unfinished: part {result.part} counted {counted}, not all of {first}..{end}; "
            "mcpi combine refuses it until it is run to its end"
        )
    return f"repeat: {result.repeat_command}  ({counted})"
