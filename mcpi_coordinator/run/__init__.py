"""A run: estimating π on a pool, and what makes a run repeatable and durable.

From the top (each imports only from the ones below it; the ``run-layers`` contract in
pyproject.toml is the exact statement):

- ``estimate``: seeded chunks on a ``WorkerPool`` until the points are done, the time is
  up or the stopping rule is met; one combined estimate out (``run_estimate``).
- ``checkpoint`` (what survives the coordinator: ``--checkpoint``/``--resume``),
  ``prefix`` (which completed chunks count: streams 0..k−1) and ``verify`` (counting a
  sample of chunks again, here or on another worker: ``--verify``).
- ``parts``: one run split over several coordinators (``--part``), and combining them.
- ``statistics``: the interval and the ``--target-error`` stopping rule.

This package's ``__init__`` imports nothing, so that the command can load one of its
modules (``statistics`` for ``mcpi runs``, say) without the rest.
"""
