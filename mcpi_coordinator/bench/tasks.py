"""The functions executor-based approaches ship to their workers.

They live in their own small module, at top level, because ``ProcessPoolExecutor``,
trio-parallel and anyio pickle a function *by reference*: the worker process imports
this module to find it, so it must be importable and cheap to import.
"""

from __future__ import annotations

import signal

from mcpi_worker.kernels import KERNELS


def count_chunk(kernel: str, seed: int, stream: int, points: int) -> int:
    """The chunk's ``inside`` count: the very function ``mcpi-worker`` runs for a sample."""
    return KERNELS[kernel](seed, stream, points, _never_stop)


def _never_stop() -> bool:
    return False  # executors have no cooperative cancellation to offer a kernel


def noop() -> None:
    """A task that does nothing: what is left of its round trip is pure overhead."""


def noop_of(_item: object) -> None:
    """``noop`` for the APIs that map a function over items (``imap_unordered``)."""


def ignore_interrupts() -> None:
    """The pools' worker initializer: Ctrl-C in a terminal goes to the whole foreground
    process group, and a forked pool worker is in ours. Without this each worker prints
    its own ``KeyboardInterrupt`` traceback while ``mcpi bench`` stops them; with it, the
    command alone hears Ctrl-C and closes its pools, which ends their workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
