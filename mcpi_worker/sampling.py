"""What one ``sample`` request counts: one stream, or (protocol version 2) a range of them.

A range of ``streams`` streams from ``stream`` is counted stream by stream with the same
kernel as a single-stream request would be, and the counts are summed per ``group`` of
streams: the result is bit-identical to one request per stream, summed, on any worker
(protocol.md §11). Used by the worker's compute threads and by the fake workers alike.
"""

from __future__ import annotations

from typing import Final

from mcpi_worker.kernels import Cancelled, Kernel, StopCheck
from mcpi_worker.kernels.base import StreamsCounter, never
from mcpi_worker.protocol import STREAM_COST_POINTS, Sample

SLICE_WORK: Final[int] = 1 << 20
"""The most work (in points, ``Sample.work``) counted between two stop checks of a range.
A kernel checks its stop flag between blocks of points, so a stream with no points (or a
few) never checks it: a range of 300,000 zero-point streams ignored ``cancel`` for
seconds. Cut into slices of about this much work, a range stops within milliseconds
however short its streams are."""

MIN_SLICE_STREAMS: Final[int] = 64
"""The fewest streams in a slice handed to a kernel's ``count_streams``: the numpy kernel's
lane loop steps up to 64 streams side by side (``kernels/lanes.py``) and checks the stop
flag itself between its own blocks of points, so long streams need no slicing for
responsiveness, and slices of one long stream each starved its lanes (a range of 1e7-point
streams ran at the single-stream speed). 64 streams' set-up is well under a millisecond."""


def count_groups(kernel: Kernel, request: Sample, should_stop: StopCheck = never) -> list[int]:
    """The inside count of each group of ``request``'s streams, in order (one count for
    a plain sample). Raises ``Cancelled`` as soon as ``should_stop`` says so.

    A sample of no points (plain or a range) counts 0 in every group without calling the
    kernel: every kernel's count is of the points drawn, and seeding a generator for none
    was most of the worker's time for such a request (for a range, per stream). A kernel
    with a ``count_streams`` method (the ``numpy`` kernel: one compiled call for many
    short streams once its fused implementation is loaded) counts each slice of a range
    its own way; any other is called stream by stream. Only the group counts are kept,
    never one count per stream.
    """
    if request.points == 0:
        return [0] * request.groups  # no point can be inside: no stream needs a generator (§11)
    if request.streams == 1:
        return [kernel(request.seed, request.stream, request.points, should_stop)]
    count_streams: StreamsCounter | None = getattr(kernel, "count_streams", None)
    group = request.group_size
    per_slice = max(1, SLICE_WORK // (request.points + STREAM_COST_POINTS))
    if count_streams is not None:
        per_slice = max(per_slice, MIN_SLICE_STREAMS)
    counts = [0] * request.groups
    done = 0
    while done < request.streams:
        if should_stop():
            raise Cancelled
        n = min(per_slice, request.streams - done)
        first = request.stream + done
        if count_streams is not None:
            singles = count_streams(request.seed, first, n, request.points, should_stop)
        else:
            singles = [kernel(request.seed, first + i, request.points, should_stop) for i in range(n)]
        for offset, inside in enumerate(singles, done):
            counts[offset // group] += inside
        done += n
    return counts
