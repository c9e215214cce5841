"""``mcpi estimate --checkpoint FILE``, ``--resume FILE`` and ``--verify FRACTION``: the
options, the run they make before anything starts, and what they add to the report.

``--resume`` takes the run's parameters (seed, points, chunk size, kernel, target, part)
from the file; an option given as well must agree with it, or the file is refused:
counts of two different runs are never merged. Every refusal is one line and exit 2,
before a worker starts.
"""

from __future__ import annotations

import argparse
import secrets
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from mcpi_coordinator.cli.text import plural
from mcpi_coordinator.errors import CheckpointRefused
from mcpi_coordinator.run.estimate import DEFAULT_CHUNK_SIZE, DEFAULT_POINTS, EstimateResult
from mcpi_coordinator.run.statistics import points_to_reach
from mcpi_worker.constants import DEFAULT_KERNEL

if TYPE_CHECKING:  # imported where used: a run without --checkpoint/--resume loads neither sqlite3 nor this
    from mcpi_coordinator.run.checkpoint import Checkpoint, RunParameters

RUN_OPTIONS: Final[dict[str, tuple[str, object]]] = {
    "seed": ("--seed", None),
    "points": ("--points", DEFAULT_POINTS),
    "chunk_size": ("--chunk-size", DEFAULT_CHUNK_SIZE),
    "kernel": ("--kernel", DEFAULT_KERNEL),
    "target_error": ("--target-error", None),
    "part": ("--part", None),
}
"""The options a checkpoint fixes: attribute → (flag, default when not given). Their
parser defaults are None, so that an option given on the command line can be told
from one left out."""


@dataclass
class PreparedRun:
    """The run's seed, and its checkpoint if it has one (open and locked)."""

    seed: int
    seed_drawn: bool
    checkpoint: Checkpoint | None

    def close(self) -> None:
        if self.checkpoint is not None:
            self.checkpoint.close()

    def saved_note(self) -> str:
        """How to carry the run on, for a run that ends unfinished ('' without a checkpoint)."""
        if self.checkpoint is None:
            return ""
        saved = f"{plural(self.checkpoint.saved, 'chunk')} saved in {self.checkpoint.path}"
        return f"; {saved}: {resume_hint(self.checkpoint)}"


def resume_hint(checkpoint: Checkpoint) -> str:
    return f"carry on with: mcpi estimate --resume {shlex.quote(str(checkpoint.path))}"


def fill_target_budget(args: argparse.Namespace, most: int) -> str | None:
    """A --target-error without --points runs until the target is reached: its points
    are the most the target can take (``statistics.points_to_reach``; the default
    1e9 would cut short any target under ~1.02e-4). Sets ``args.points`` to them, or
    says why it cannot (more than ``most``)."""
    if args.points is not None or args.target_error is None or args.resume is not None:
        return None
    needed = points_to_reach(args.target_error)
    if needed > most:
        return (
            f"--target-error {args.target_error:g} can take up to {needed:.3g} points, more than a "
            f"run may draw ({most:,}); give --points N to stop after N points whatever the error"
        )
    args.points = needed
    return None


def prepare(args: argparse.Namespace) -> PreparedRun:
    """Fill the run options in ``args`` (from the checkpoint being resumed, or their
    defaults), draw the seed if none was given, and open or create the checkpoint.
    Raises ``CheckpointRefused``."""
    if args.resume is not None:
        from mcpi_coordinator.run.checkpoint import Checkpoint

        checkpoint = Checkpoint.resume(args.resume)
        try:
            _take_parameters(args, checkpoint)
        except CheckpointRefused:
            checkpoint.close()
            raise
        return PreparedRun(seed=args.seed, seed_drawn=False, checkpoint=checkpoint)
    for name, (_, default) in RUN_OPTIONS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    seed_drawn = args.seed is None
    if seed_drawn:
        args.seed = secrets.randbits(64)
    created = None
    if args.checkpoint is not None:
        from mcpi_coordinator.run.checkpoint import Checkpoint

        created = Checkpoint.create(args.checkpoint, parameters_of(args))
    return PreparedRun(seed=args.seed, seed_drawn=seed_drawn, checkpoint=created)


def parameters_of(args: argparse.Namespace) -> RunParameters:
    from mcpi_coordinator.run.checkpoint import RunParameters

    return RunParameters(
        seed=args.seed, points=args.points, chunk_size=args.chunk_size, kernel=args.kernel,
        target_error=args.target_error, part=args.part,
    )  # fmt: skip


def _take_parameters(args: argparse.Namespace, checkpoint: Checkpoint) -> None:
    recorded = checkpoint.parameters
    for name, (flag, _) in RUN_OPTIONS.items():
        given, theirs = getattr(args, name), getattr(recorded, name)
        if given is not None and given != theirs:
            raise CheckpointRefused(
                f"checkpoint {checkpoint.path} is a run with {_option(flag, theirs)}, not "
                f"{_option(flag, given)}: counts of two runs are never merged"
            )
        setattr(args, name, theirs)


def _option(flag: str, value: Any) -> str:
    if value is None:
        return f"no {flag}"
    return f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}"


# ---------------------------------------------------------------------- the report


def verify_json(result: EstimateResult) -> dict[str, Any]:
    """The --verify fields, zero for a run without it (which does not load ``run.verify``)."""
    stats = result.verification
    if stats is None:
        return {"verify": 0.0, "verified_chunks": 0, "mismatches": 0, "local_checks": 0, "recomputed_chunks": 0,
                "wrong_workers": []}  # fmt: skip
    return {
        "verify": stats.fraction,
        "verified_chunks": stats.verified_chunks,
        "mismatches": stats.mismatches,
        "local_checks": stats.local_checks,
        "recomputed_chunks": stats.recomputed_chunks,
        "wrong_workers": [
            {"slot": w.slot, "pid": w.pid, "host": w.host, "caught_on_chunk": w.stream} for w in stats.retired
        ],
    }


def verify_row(result: EstimateResult) -> tuple[str, str] | None:
    stats = result.verification
    if stats is None:
        return None
    text = f"{plural(stats.verified_chunks, 'chunk')} checked on a second worker (--verify {stats.fraction:g})"
    if stats.local_checks:
        text += f", {stats.local_checks:,} of them by the coordinator itself"
    if stats.mismatches:
        text += f"; {stats.mismatches:,} mismatched"
    for worker in stats.retired:
        text += (
            f"; worker {worker.slot} (host {worker.host}, pid {worker.pid}) was wrong on chunk "
            f"{worker.stream} and retired"
        )
    if stats.recomputed_chunks:
        text += f"; {stats.recomputed_chunks:,} of its chunks computed again"
    return ("verified", text)


def checkpoint_line(result: EstimateResult) -> str | None:
    """Where the run is saved, and how to carry it on after --max-time."""
    if result.checkpoint is None:
        return None
    taken = f", {result.resumed_chunks:,} of them from before" if result.resumed_chunks else ""
    line = f"checkpoint: {result.checkpoint} ({plural(result.saved_chunks, 'chunk')} saved{taken})"
    if result.stopped_early == "max_time":
        line += f"; carry on with: mcpi estimate --resume {shlex.quote(result.checkpoint)}"
    return line
