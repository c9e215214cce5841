"""``mcpi bench``: the ways to spread CPU-bound work over processes, measured side by side.

- ``approaches``: the registry of approaches ``mcpi bench approaches`` compares;
  ``in_process`` (sequential, threads, process-pool), ``per_chunk_process``
  (asyncio-subprocess, trio-run-process, sharing ``one_shot``), ``trio_pool``.
- ``overhead``: the cost of one tiny task, our pool against its peers.
- ``workload``, ``measure``, ``report``, ``chart``, ``failures``: what they run, how
  it is timed, the figures shown, the optional PNG, and the one place errors are worded.

This package imports nothing heavy at its top: worker processes of the executor-based
approaches import ``bench.tasks`` to find the functions they run.
"""
