"""A kernel's stop check that turns true on a chosen call: for tests that stop a count
part-way, on a count of checks rather than on a clock."""

from __future__ import annotations

from collections.abc import Callable


def stop_after(calls: int) -> tuple[Callable[[], bool], list[int]]:
    """A should_stop turning true on its ``calls``-th call, and its call counter."""
    counter = [0]

    def should_stop() -> bool:
        counter[0] += 1
        return counter[0] >= calls

    return should_stop, counter
