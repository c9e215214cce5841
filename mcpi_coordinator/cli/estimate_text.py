"""``mcpi estimate``'s text: a finished run as the table a person reads.

Rendering only: the command (``cli.estimate``) calls ``print_result``; ``mcpi combine``
prints a combined run's estimate with ``estimate_rows`` and ``points_text``, in the same
words and digits.
"""

from __future__ import annotations

from mcpi_coordinator.cli import runs, text
from mcpi_coordinator.pool.stats import SlotState
from mcpi_coordinator.run.estimate import EstimateResult, chunk_count, pi_statistics


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
    """``1,000,000 in 10 chunks of up to 100,000``: the points row, as combine says it too."""
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
    """Print ``mcpi estimate``'s table for ``result`` on stdout, then the lines meant to
    be copied (the repeat command, the checkpoint's); ``seed_drawn`` says the seed was
    drawn at random, so the table says how to repeat the run."""
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
