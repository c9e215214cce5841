"""``mcpi bench approaches --plot``: a bar chart of each approach's median wall time.

matplotlib is optional (the ``bench`` extra) and imported only here, after
``plots.ensure_available()`` has turned its absence into one ``PlottingUnavailable``
naming what to install, the same way every picture of mcpi does. It lives in ``cli``,
beside ``plots`` whose palette and guard it uses: ``bench`` sits below ``cli`` and does
not import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mcpi_coordinator import files
from mcpi_coordinator.bench.report import ApproachRow
from mcpi_coordinator.bench.workload import Workload
from mcpi_coordinator.cli import plots

BAR_COLOUR = plots.INSIDE_COLOUR
BASELINE_COLOUR = plots.OUTSIDE_COLOUR


def save_bar_chart(workload: Workload, table: Sequence[ApproachRow], out: Path) -> None:
    """Write a PNG to ``out``. Raises ``plots.PlottingUnavailable`` or ``OSError``."""
    if out.suffix.lower() != ".png":
        raise ValueError(f"{out}: the chart is written as a .png")
    plots.ensure_available()
    from matplotlib.figure import Figure  # savefig picks the Agg canvas for PNG: no pyplot

    figure = Figure(figsize=(7.5, 0.55 * len(table) + 1.6), dpi=110, layout="constrained")
    try:
        ax = figure.add_subplot()
        names = [row.approach for row in table][::-1]  # first approach on top
        walls = [row.wall_s for row in table][::-1]
        colours = [BASELINE_COLOUR if n == "sequential" else BAR_COLOUR for n in names]
        bars = ax.barh(names, walls, color=colours)
        labels = [
            f"{row.wall_s:.3g} s" + (f"  ·  {row.speedup:.2f}×" if row.speedup is not None else "")
            for row in table
        ][::-1]
        ax.bar_label(bars, labels=labels, padding=4, fontsize=9, color=plots.INK)
        ax.set_xlim(0, max(walls) * 1.35)
        ax.set_xlabel("wall time, median of runs (s) — shorter is better; × = speed-up vs sequential")
        ax.set_title(
            f"{workload.points:,} points, {workload.workers} workers, "
            f"{workload.kernel} kernel, seed {workload.seed}",
            fontsize=10,
            color=plots.MUTED_INK,
        )
        ax.spines[["top", "right"]].set_visible(False)
        figure.suptitle("mcpi bench approaches", fontsize=13, fontweight="bold", color=plots.INK)
        with files.replacing(out) as file:  # a symlink at out is replaced, not written through
            figure.savefig(file, format="png")
    finally:
        figure.clear()
