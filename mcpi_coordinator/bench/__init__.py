"""``mcpi bench``: the ways to spread CPU-bound work over processes, measured side by side.

- ``approaches``: the registry of approaches ``mcpi bench approaches`` compares;
  ``in_process`` (sequential, threads, process-pool), ``per_chunk_process``
  (asyncio-subprocess, trio-run-process, sharing ``one_shot``), ``trio_pool``.
- ``overhead``: the cost of one tiny task, our pool against its peers.
- ``workload``, ``measure``, ``report``, ``failures``: what they run, how it is timed,
  the figures shown, and the one place errors are worded. The optional PNG of
  ``--plot`` is the command's: ``cli.bench_chart``, drawn with ``cli.plots``.

This package imports nothing heavy at its top: worker processes of the executor-based
approaches import ``bench.tasks`` to find the functions they run.
"""
