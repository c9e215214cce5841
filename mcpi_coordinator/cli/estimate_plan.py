"""``mcpi estimate``'s plan: its arguments checked together, and the worker slots it
starts.

The parser (``cli.estimate_parser``) checks each option alone; what holds only for
options together (a --part with --target-error, more parts than chunks, the machine's
room for the workers, the slots a run of few chunks can use) is checked here, once the
line has parsed, and each problem is one line for ``parser.error`` (exit 2). ``args``
gains the planned slots (``args.slots``), which the command's run
(``cli.estimate``) starts.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Sequence

from mcpi_coordinator import arguments as cli_args
from mcpi_coordinator.cli import text
from mcpi_coordinator.launch import capacity, remote
from mcpi_coordinator.launch.local import default_worker_command
from mcpi_coordinator.launch.redact import shown_command
from mcpi_coordinator.run.estimate import DEFAULT_CHUNK_SIZE, DEFAULT_POINTS, chunk_count
from mcpi_worker.constants import DEFAULT_KERNEL
from mcpi_worker.quoting import quoted


def shown_level(args: argparse.Namespace) -> str:
    """The least log level the command shows: ``--log-level``, else ``error`` with
    ``--quiet``, else ``warning`` (``launch.early.shown_level`` reads the same from the
    command line, for the workers it starts before parsing)."""
    return str(args.log_level or ("error" if args.quiet else "warning"))


def worker_command(worker_cmd: str | None, index: int, shown: str = "info") -> list[str]:
    """The argument vector that starts worker ``index``: ``--worker-cmd`` shell-split,
    or this interpreter's ``mcpi-worker``, writing the lines a coordinator showing
    ``shown`` can show (``launch.early.worker_argv``). Raises ``RemoteConfigError`` (a
    ``ValueError``) with one clear line for an unusable one."""
    if worker_cmd is None:
        return default_worker_command(shown)
    what = cli_args.named(worker_cmd, "--worker-cmd")
    return remote.substitute_index(remote.split_command(worker_cmd, what), index)


def missing_program(slots: Sequence[remote.WorkerSlot], worker_cmd: str | None) -> str | None:
    """The one-line problem if a program the slots start here (the ``--worker-cmd``, or
    ``ssh`` and ``srun`` for remote workers) is not there to run, or None. Found now,
    it is a usage error with nothing started; found by the pool, it was three failed
    starts of every worker and "no worker left" (exit 1) for a typo. Looked up as
    ``subprocess`` will: on ``PATH``, or as the path it is when it has a slash."""
    for program in dict.fromkeys(slot.command[0] for slot in slots):
        if shutil.which(program) is not None:
            continue
        if os.sep in program:
            why = "is not an executable file" if os.path.exists(program) else "does not exist"
        else:
            why = "is not a program on PATH"
        if worker_cmd is not None and any(slot.host is None and slot.command[0] == program for slot in slots):
            return f"invalid {cli_args.named(worker_cmd, '--worker-cmd')}: {quoted(program)} {why}"
        return f"cannot start the workers: {quoted(program)} {why}"
    return None


def part_problem(args: argparse.Namespace) -> str | None:
    """A --part that cannot be: with --target-error, or more parts than chunks (the
    one-line problem, or None)."""
    if args.part is None:
        return None
    if args.target_error is not None:
        return (
            "--part and --target-error do not mix: the target stops the whole run's prefix of "
            "chunks, which no part sees; run the parts to their end (or drop --part)"
        )
    if args.resume is not None:
        return None  # the checkpoint's parameters decide; a --part that differs is refused then
    chunks = _run_chunks(args)
    if args.part.of > chunks:
        return f"--part {args.part}: a run of {chunks:,} chunks has at most {chunks:,} parts"
    return None


def check_arguments(args: argparse.Namespace, machine: capacity.MachineLimits) -> str | None:
    """The slots the run would start, checked: sets ``args.workers`` (when not given),
    ``args.slots``, ``args.starting_limits``, ``args.asked_workers`` and
    ``args.capacity_checked``. Returns the one-line problem with them (an unusable
    --worker-cmd or host, no Slurm allocation, more workers than the machine holds), or
    None."""
    if args.workers is None:
        args.workers = 0 if args.slurm else (os.cpu_count() or 1)
    refused: tuple[type[Exception], ...] = (remote.RemoteConfigError,)
    if args.slurm:
        from mcpi_coordinator.launch import slurm  # its allocation and steps: only for --slurm

        refused += (slurm.SlurmError,)
    try:
        shown = shown_level(args)
        worker_command(args.worker_cmd, 0)  # checked even when every worker is remote
        nodes = slurm.allocation_nodes(os.environ) if args.slurm else ()
        slots = [] if args.slurm and not (args.workers or args.host or args.hosts_file) else (
            remote.slots_from_args(args, lambda i: worker_command(args.worker_cmd, i, shown))
        )
    except refused as error:
        return str(error)
    args.slots = slots
    if nodes:
        # One step per node, one connection each, all the node's CPUs as its jobs.
        worker = worker_command(args.worker_cmd, 0, shown)
        args.slots += [
            remote.WorkerSlot(tuple(slurm.srun_worker_argv(node, [*worker, "--jobs", str(node.cpus)])),
                              remote.HostSpec(node.name))
            for node in nodes
        ]
    if (missing := missing_program(args.slots, args.worker_cmd)) is not None:
        return missing
    args.starting_limits = remote.starting_limits(args.slots)
    args.asked_workers = len(args.slots)
    if args.resume is None:
        drop_unusable_slots(args)  # the machine need only hold the workers that will start
    # The kernel that will run: --kernel, else a resumed checkpoint's (checked once the
    # file is open, so that nothing is created for a run refused here), else the default.
    args.capacity_checked = args.kernel is not None or args.resume is None
    return capacity_problem(args, machine) if args.capacity_checked else None


def capacity_problem(args: argparse.Namespace, machine: capacity.MachineLimits) -> str | None:
    """Whether the machine holds the planned slots' workers, counting each local one
    for the kernel the run will use (``args.kernel``; the default until it is set), or,
    for a ``--worker-cmd``, for its descriptors alone (``capacity.check_slots``)."""
    kernel = DEFAULT_KERNEL if args.kernel is None else args.kernel
    starts = remote.concurrent_starts(args.starting_limits)
    own_worker = args.worker_cmd is None
    return capacity.check_slots(
        args.slots, machine, max_starting=starts, kernel=kernel, own_worker=own_worker, asked=args.workers
    )


def wait_for_every_worker(args: argparse.Namespace) -> bool:
    """Whether work waits for every worker's welcome. Local mcpi-workers are alike, so
    work starts at the first ready one. Other workers (--worker-cmd, ssh, Slurm) may
    differ in what they offer (kernels, sizes, hosts), and the pool refuses a request
    no worker can serve only once it knows what each offers; --verify sends its checks
    to another host when one is up, which it knows from the welcomes."""
    return bool(args.verify) or args.worker_cmd is not None or any(slot.host is not None for slot in args.slots)


def drop_unusable_slots(args: argparse.Namespace) -> None:
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


def idle_workers_note(args: argparse.Namespace) -> str | None:
    """A chunk size above points/workers leaves workers with nothing to do: the note
    that says so, and that only the workers the run can use are started (None when
    every asked worker has a chunk)."""
    chunks = len(_streams(args))
    points = asked_points(args)
    asked: int = args.asked_workers
    if not chunks < asked <= points:
        return None
    even = -(-points // asked)
    started = len(args.slots)
    return (
        f"note: {text.plural(chunks, 'chunk')} for {text.plural(asked, 'worker')}: starting "
        f"{started} ({asked - started} would be idle); --chunk-size {even:,} would use them all"
    )


def _streams(args: argparse.Namespace) -> range:
    """The chunks this coordinator counts: the run's, or its --part's."""
    total = _run_chunks(args)
    return range(total) if args.part is None else args.part.streams(total)


def _run_chunks(args: argparse.Namespace) -> int:
    """The run's chunks (for options not known yet, a resumed run's before its file is
    open, their defaults)."""
    points = DEFAULT_POINTS if args.points is None else args.points
    return chunk_count(points, DEFAULT_CHUNK_SIZE if args.chunk_size is None else args.chunk_size)


def asked_points(args: argparse.Namespace) -> int:
    """The points this coordinator was asked for: the run's, or its --part's share."""
    points: int = args.points
    return points if args.part is None else args.part.points(points, args.chunk_size)


def slot_names(args: argparse.Namespace) -> list[str]:
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
