"""The fused kernels' Python side: the loops that call the compiled code, without numba.

The compiled code (``fused.py``, ``fused_range.py``, ``lanes.py``) is five entry points
over arrays (``Compiled``): it allocates nothing, touches no Python object and holds no
GIL. Everything around them is here: the buffers, the blocks between two ``should_stop``
checks (so a cancel, end of input or the parent's death is seen within milliseconds),
how a range is cut into groups of lanes. Two sets of entry points run under these
loops: numba's own (``fused.NUMBA``, after ``import numba``) and the same machine code
loaded from our object cache without numba (``native.py``), so which one a worker
loaded changes no count and no stop behaviour, only how long the load took.

The buffers are the standard library's ``array.array`` (uint64 ``"Q"``, int64 ``"q"``),
seen through views that start on cache lines of their own (``u64``), and a stream is
seeded by the compiled code itself where the entry points can (``first_state``): a
worker counting with our object cache never imports NumPy. numba's entry points take
NumPy arrays, made over the same memory (``fused.as_u64``); any C-contiguous buffer of the
right item size will do, NumPy's arrays included.

Importing this module imports nothing outside the standard library and this package.
"""

from __future__ import annotations

from array import array
from typing import TYPE_CHECKING, Final, Protocol

from mcpi_worker.kernels.base import Cancelled, StopCheck, never, sfc64_state, stream_seed_sequence

if TYPE_CHECKING:
    from typing import TypeAlias

    import numpy as np

    Words: TypeAlias = array[int] | memoryview | np.ndarray
    """What the entry points take: a C-contiguous, writable buffer of 8-byte words."""

BLOCK_POINTS: Final[int] = 1 << 20
"""Points per compiled call of the single-stream loop between two ``should_stop``
checks: about a millisecond of work, so a cancel is seen within milliseconds; a call
costs microseconds, so the checks cost nothing."""

RING_WORDS: Final[int] = 128
"""The single-stream loop's buffer (1 KiB, in L1): a ring that the generator writes its
outputs into while the test reads the outputs written ``fused.LAG_GROUPS`` groups
before (``fused._count_outputs`` says why)."""

SCRATCH_WORDS: Final[int] = 16
"""uint64 words of working memory seeding one stream needs: entropy, pool, output."""

RANGE_POINTS_PER_CALL: Final[int] = 1 << 20
"""Points one compiled call of the stream-by-stream range loop counts between two
``should_stop`` checks (a millisecond or two of work)."""

LANES: Final[int] = 64
"""Streams stepped side by side: a few AVX-512 vectors of 8 lanes (or AVX2 vectors of
4), enough independent chains to keep the vector units busy; their state (2 KiB) stays
in L1."""

LANE_MULTIPLE: Final[int] = 16
"""A group is padded to a multiple of this many lanes: two vectors of 8 (the loop takes
lanes in pairs, see ``lanes._step_lanes``); below a vector's width the vectoriser leaves
the loop scalar."""

NARROW: Final[int] = 8
"""A group of this many streams or fewer is stepped in one vector of 8 lanes, one lane an
iteration (a few long streams: the start of a run, when the coordinator's pieces are
one, two, four streams)."""

MIN_STREAMS: Final[int] = 4
"""Fewer streams than this are counted one by one with the single-stream loop: a vector
of 8 lanes carrying only 1 to 3 real streams is no faster than that loop."""

LANES_POINTS_PER_CALL: Final[int] = 1 << 21
"""Points one compiled call of the lane loop counts between two ``should_stop`` checks
(well under a millisecond of work), so a cancel, end of input or the parent's death is
seen within milliseconds; a call costs a few microseconds, so the checks cost nothing."""

SEED_COST_POINTS: Final[int] = 256
"""What seeding one stream costs in the lane loop, counted in points: a call of
zero-point streams still ends, and checks the stop flag, within ``LANES_POINTS_PER_CALL``."""

# The working memory every entry point that needs some takes (``work``), one uint64
# array: no compiled call allocates (so none needs numba's runtime), and a range
# allocates it once, not once a call.
STATE_AT: Final[int] = 0
SCRATCH_AT: Final[int] = STATE_AT + 4
WORDS_AT: Final[int] = -(-(SCRATCH_AT + SCRATCH_WORDS) // 8) * 8
"""On a cache line of its own (``work`` starts on one): the single-stream loop reads
its ring 64 bytes at a time, and a load across two lines costs two."""
LANE_STATE_AT: Final[int] = WORDS_AT + RING_WORDS
WORK_WORDS: Final[int] = LANE_STATE_AT + 4 * LANES


class SingleStream(Protocol):
    """The single-stream entry point. Every array is C-contiguous, of the dtype named;
    none is kept after the call."""

    def count_outputs(self, state: Words, points: int, words: Words) -> int:
        """Count the next ``points`` points of the SFC64 ``state`` (a, b, c, counter;
        uint64[4]) inside the quarter circle, and leave ``state`` advanced past them.
        ``words``: uint64[RING_WORDS], scratch."""
        ...


class StreamByStream(SingleStream, Protocol):
    """With the range loop that counts one stream after the other. ``work`` is
    ``WORK_WORDS`` uint64 words of scratch."""

    def count_range(
        self, seed: int, first: int, streams: int, points: int, counts: Words, work: Words
    ) -> None:
        """``counts[i]`` (int64[streams]) := the count of stream ``first + i``, one stream
        after the other."""
        ...


class Compiled(StreamByStream, Protocol):
    """Every compiled entry point: with the lanes."""

    def seed_lanes(
        self,
        seed: int,
        first: int,
        a: Words,
        b: Words,
        c: Words,
        w: Words,
        work: Words,
    ) -> None:
        """Lane ``j`` of (a, b, c, w) (uint64 arrays of one length) := the SFC64 state of
        stream ``first + j`` (modulo 2**64), as NumPy seeds it."""
        ...

    def step_lanes(
        self,
        a: Words,
        b: Words,
        c: Words,
        w: Words,
        counts: Words,
        steps: int,
        pairs: bool,
    ) -> None:
        """Advance every lane by ``steps`` outputs, adding each lane's points inside to
        ``counts`` (int64, as long as the lanes; ``width`` lanes, see ``width``; ``pairs``:
        ``width > NARROW``)."""
        ...

    def count_short(
        self,
        seed: int,
        first: int,
        streams: int,
        points: int,
        counts: Words,
        work: Words,
        group_counts: Words,
    ) -> None:
        """``counts[i]`` (int64[streams]) := the count of stream ``first + i``, in groups
        of ``LANES`` lanes (the last one padded), all in one call. ``group_counts``:
        int64[LANES], scratch."""
        ...


LINE_BYTES: Final[int] = 64
"""A cache line: the unit in which cores share memory."""


def _words_on_lines_of_their_own(typecode: str, words: int) -> memoryview:
    """``words`` zeroed 8-byte words starting on a cache line, on lines no other buffer uses.

    The jobs of one worker (``--jobs N``) run the compiled code side by side, each on its
    own buffers, and the entry points write their state and counts as they go. Small
    ``array.array`` buffers come from one pool of the interpreter's, side by side, so two
    jobs' buffers could share a line, and every write of one job then took the line away
    from the other's core (false sharing: a ``--jobs 2`` worker spent up to half as much
    CPU again, as it happened to be allocated). Rounded up to whole lines, with a line to
    spare for the alignment; the view keeps its array alive."""
    line_words = LINE_BYTES // 8
    padded = -(-max(words, 1) // line_words) * line_words
    raw = array(typecode, (0,)) * (padded + line_words)
    skip = (-raw.buffer_info()[0] % LINE_BYTES) // 8
    return memoryview(raw)[skip : skip + words]


def u64(words: int) -> memoryview:
    """``words`` zeroed uint64, on cache lines of their own (``_words_on_lines_of_their_own``)."""
    return _words_on_lines_of_their_own("Q", words)


def i64(words: int) -> memoryview:
    """``words`` zeroed int64, on cache lines of their own."""
    return _words_on_lines_of_their_own("q", words)


if array("Q").itemsize != 8 or array("q").itemsize != 8:  # C's long long: 8 bytes wherever numba runs
    raise ImportError("array.array's 'Q' and 'q' are not 8 bytes here")


def work_array() -> memoryview:
    """Fresh scratch for the entry points that take ``work``."""
    return u64(WORK_WORDS)


def width(streams: int) -> int:
    """Lanes for a group of ``streams`` (at most ``LANES``): ``NARROW`` (one vector) for a
    few, else padded to a multiple of ``LANE_MULTIPLE``."""
    if streams <= NARROW:
        return NARROW
    return (streams + LANE_MULTIPLE - 1) // LANE_MULTIPLE * LANE_MULTIPLE


def initial_state(seed: int, stream: int) -> np.ndarray:
    """The stream's SFC64 (a, b, c, counter), after NumPy's seeding and 12 discards (by
    NumPy, imported here)."""
    import numpy as np

    return sfc64_state(np.random.SFC64(stream_seed_sequence(seed, stream)))


def first_state(compiled: SingleStream, seed: int, stream: int) -> Words:
    """The stream's SFC64 (a, b, c, counter) as ``initial_state`` gives it: seeded by the
    compiled code (a lane group of one) where ``compiled`` has the lanes' entry points,
    else by NumPy. ``checks.verify`` holds the two equal after every load."""
    seed_lanes = getattr(compiled, "seed_lanes", None)
    if seed_lanes is None:
        return initial_state(seed, stream)
    a, b, c, w = u64(1), u64(1), u64(1), u64(1)
    seed_lanes(seed, stream, a, b, c, w, work_array())
    state = u64(4)  # count_from writes it back after every block: on lines of its own too
    state[0], state[1], state[2], state[3] = a[0], b[0], c[0], w[0]
    return state


def count_from(
    compiled: SingleStream,
    state: Words,
    points: int,
    should_stop: StopCheck = never,
    *,
    block_points: int = BLOCK_POINTS,
) -> int:
    """Count the next ``points`` points from SFC64 ``state`` (advanced past them), in
    blocks of ``block_points`` with a stop check before each. Memory is flat: the
    state and one buffer of ``RING_WORDS`` words, whatever ``points``. Raises
    ``Cancelled`` when ``should_stop`` says so, ``ValueError`` for a block below 1."""
    if block_points < 1:
        raise ValueError("block_points must be at least 1")
    words = u64(RING_WORDS)
    inside = 0
    remaining = points
    while remaining > 0:
        if should_stop():
            raise Cancelled
        n = min(block_points, remaining)
        inside += int(compiled.count_outputs(state, n, words))
        remaining -= n
    return inside


def count(
    compiled: SingleStream,
    seed: int,
    stream: int,
    points: int,
    should_stop: StopCheck = never,
    *,
    block_points: int = BLOCK_POINTS,
) -> int:
    """The numpy kernel's count for (seed, stream, points)."""
    return count_from(compiled, first_state(compiled, seed, stream), points, should_stop, block_points=block_points)


def count_range(
    compiled: StreamByStream, seed: int, first: int, streams: int, points: int, should_stop: StopCheck = never
) -> list[int]:
    """The count of each of ``streams`` streams from ``first``, ``points`` each, one
    stream after the other: in calls of about ``RANGE_POINTS_PER_CALL`` points, with a
    stop check before each. Raises ``Cancelled`` when ``should_stop`` says so."""
    if points >= RANGE_POINTS_PER_CALL:  # long streams: one by one, each in stoppable blocks
        return [count(compiled, seed, (first + i) % 2**64, points, should_stop) for i in range(streams)]
    counts = i64(streams)
    work = work_array()
    per_call = max(1, RANGE_POINTS_PER_CALL // max(points, 1))
    done = 0
    while done < streams:
        if should_stop():
            raise Cancelled
        n = min(per_call, streams - done)
        compiled.count_range(seed, (first + done) % 2**64, n, points, memoryview(counts)[done : done + n], work)
        done += n
    return counts.tolist()


def long_groups(streams: int) -> list[int]:
    """How many streams each group of a range of long streams takes, in order: groups of
    ``LANES``, then the rest in one group padded to a multiple of ``LANE_MULTIPLE``,
    except that what lies past the last full multiple, when it is ``NARROW`` streams or
    fewer, goes on its own: one vector of ``NARROW`` lanes from ``MIN_STREAMS`` streams,
    else one stream at a time through the single-stream loop. Every lane costs a step
    whether its stream is real or padding: 17 streams padded to 32 lanes took nearly twice
    the time of 16 lanes and one stream alone (docs/worker.md has the measured costs)."""
    groups = [LANES] * (streams // LANES)
    rest = streams % LANES
    whole = rest // LANE_MULTIPLE * LANE_MULTIPLE
    left = rest - whole
    if left > NARROW:  # padding the last group costs less than a vector and single streams
        whole, left = rest, 0
    if whole:
        groups.append(whole)
    if left >= MIN_STREAMS:
        groups.append(left)
    else:
        groups.extend([1] * left)
    return groups


def _count_long(
    compiled: Compiled,
    seed: int,
    first: int,
    streams: int,
    points: int,
    should_stop: StopCheck,
    counts: memoryview,
    points_per_call: int,
) -> None:
    """Streams too long for one call each: a group at a time (``long_groups``), seeded,
    then stepped in calls of about ``points_per_call`` points with a stop check before
    each; a group of one stream goes through the single-stream loop."""
    done = 0
    work = work_array()
    for real in long_groups(streams):
        if should_stop():
            raise Cancelled
        if real == 1:
            counts[done] = count(compiled, seed, (first + done) % 2**64, points, should_stop)
            done += 1
            continue
        lanes = width(real)
        a, b, c, w = u64(lanes), u64(lanes), u64(lanes), u64(lanes)
        group_counts = i64(lanes)
        compiled.seed_lanes(seed, (first + done) % 2**64, a, b, c, w, work)
        per_call = max(1, points_per_call // lanes)
        stepped = 0
        while stepped < points:
            if should_stop():
                raise Cancelled
            n = min(per_call, points - stepped)
            compiled.step_lanes(a, b, c, w, group_counts, n, lanes > NARROW)
            stepped += n
        counts[done : done + real] = group_counts[:real]
        done += real


def count_streams(
    compiled: Compiled,
    seed: int,
    first: int,
    streams: int,
    points: int,
    should_stop: StopCheck = never,
    *,
    points_per_call: int = LANES_POINTS_PER_CALL,
) -> list[int]:
    """The count of each of ``streams`` streams from ``first``, ``points`` each (a
    ``StreamsCounter`` once ``compiled`` is bound): in SIMD lanes, with a stop check
    before each compiled call of about ``points_per_call`` points (at least one pass of
    ``LANES`` streams over 1 point); fewer than ``MIN_STREAMS`` streams one stream after
    the other. Memory is flat in ``points``: a group's state and counts. Raises
    ``Cancelled`` when ``should_stop`` says so, ``ValueError`` for a call below 1 point."""
    if points_per_call < 1:
        raise ValueError("points_per_call must be at least 1")
    if streams < MIN_STREAMS:
        return count_range(compiled, seed, first, streams, points, should_stop)
    counts = i64(streams)
    if points * LANES > points_per_call:
        _count_long(compiled, seed, first, streams, points, should_stop, counts, points_per_call)
        return counts.tolist()
    per_call = max(LANES, points_per_call // (points + SEED_COST_POINTS) // LANES * LANES)
    work = work_array()
    group_counts = i64(LANES)
    done = 0
    while done < streams:
        if should_stop():
            raise Cancelled
        n = min(per_call, streams - done)
        compiled.count_short(
            seed, (first + done) % 2**64, n, points, memoryview(counts)[done : done + n], work, group_counts
        )
        done += n
    return counts.tolist()
