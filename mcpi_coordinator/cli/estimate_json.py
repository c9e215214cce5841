"""``mcpi estimate --json``: a finished run as one JSON object.

Shaping only: the command (``cli.estimate``) prints ``json.dumps(result_json(...))``,
and ``mcpi combine`` writes a combined run's estimate with ``estimate_fields``, so the
two agree field for field. docs/estimate.md lists the fields.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from mcpi_coordinator.cli import runs
from mcpi_coordinator.launch import remote
from mcpi_coordinator.run.estimate import EstimateResult, chunk_count, pi_statistics


def estimate_fields(inside: int, points: int) -> dict[str, Any]:
    """The estimate's own JSON fields; ``mcpi combine`` writes a combined run's with these."""
    stats = pi_statistics(inside, points)
    return {"pi": stats.pi, "error": stats.error, "std_error": stats.std_error, "ci95": list(stats.ci95)}


def result_json(result: EstimateResult) -> dict[str, Any]:
    """The object ``mcpi estimate --json`` prints for ``result``: every field always
    present (None where it does not apply), in this order."""
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
    from mcpi_coordinator.run.parts import part_json  # a --part run only

    return part_json(result.part, chunk_count(result.requested_points, result.chunk_size))
