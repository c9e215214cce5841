"""The busy machine the benchmark scripts run beside (``--busy N``): the same loops as
``mcpi bench overhead --busy N`` (``mcpi_coordinator.bench.busy``), under the name the
scripts import them by."""

from mcpi_coordinator.bench.busy import add_busy_arguments, busy_loops, described

__all__ = ["add_busy_arguments", "busy_loops", "described"]
