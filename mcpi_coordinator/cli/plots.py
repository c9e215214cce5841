"""Pictures: the lesson's quadrant scatter and the convergence of an estimate.

matplotlib and Pillow come with the optional ``bench`` extra. They are imported
inside the drawing functions, never at module import, so a run that draws nothing
never pays for them, and their absence surfaces as one :class:`PlottingUnavailable`
whose message says what to install. Figures are drawn on matplotlib's Agg canvas
directly (no pyplot), so there is no global figure state and no GUI backend.

The scatter draws the very points the numpy kernel counts
(:func:`mcpi_worker.kernels.iter_point_blocks`), so the number of points coloured
"inside" equals ``count_numpy(seed, stream, points)``. The convergence plot is
drawn after a run from the per-chunk counts the run already keeps.

Failures a user can meet (the extra is missing, the file cannot be written) are
raised as :class:`~mcpi_coordinator.errors.McpiError` subclasses with a one-line
message; this module is the one place that translates them from ImportError/OSError.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import numpy as np

from mcpi_coordinator import files
from mcpi_coordinator.cli.facts import INSTALL_HINT
from mcpi_coordinator.errors import McpiError
from mcpi_coordinator.run.estimate import pi_statistics
from mcpi_worker.kernels import inside_quarter_circle, iter_point_blocks
from mcpi_worker.quoting import quoted

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL.Image import Image

    from mcpi_coordinator.run.estimate import EstimateResult

PALETTE_COLOURS: Final[int] = 64
"""Scatter images are saved with a palette: a few flat colours and their antialiased
edges fit in 64 entries with no visible change, and the files are several times
smaller."""

MAX_CURVE_POINTS: Final[int] = 2_000
"""The convergence curve is drawn at no more chunk counts than this, log-spaced."""

INSIDE_COLOUR: Final[str] = "#2a6db0"
OUTSIDE_COLOUR: Final[str] = "#e8833a"
INK: Final[str] = "#222222"
MUTED_INK: Final[str] = "#555555"

PNG_SIGNATURE: Final[bytes] = b"\x89PNG\r\n\x1a\n"
GIF_SIGNATURE: Final[bytes] = b"GIF89a"


class PlottingUnavailable(McpiError):
    """matplotlib or Pillow cannot be imported. The message names the extra to install."""


class PictureNotWritten(McpiError):
    """The image file could not be written (no such directory, no permission, ...)."""


@dataclass(frozen=True)
class Picture:
    """An image file that was written."""

    path: Path
    format: str
    """``"png"`` or ``"gif"``."""
    width: int
    height: int
    frames: int
    """1 for a PNG."""


# --- number formatting --------------------------------------------------------------


def _signed(value: float, decimals: int) -> str:
    """``+0.0012`` / ``−0.0012``, with a typographic minus that lines up with the plus."""
    return f"{value:+.{decimals}f}".replace("-", "\u2212")


def _plural(number: int, noun: str) -> str:
    return f"{number:,} {noun}" if number == 1 else f"{number:,} {noun}s"


def _decimals_for(half_width: float) -> int:
    """Enough decimals to show the first two significant digits of the interval."""
    if not half_width > 0:
        return 4
    return min(9, max(3, math.ceil(-math.log10(half_width)) + 1))


# --- the one place that imports the extra -------------------------------------------


def _require_extra() -> tuple[type[Figure], Any]:
    """Import the Agg figure machinery and Pillow, or raise :class:`PlottingUnavailable`."""
    try:
        import PIL.Image
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlottingUnavailable(_missing_extra_message()) from None

    class AggFigure(Figure):
        """A Figure that renders with Agg, whatever the default backend is."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            FigureCanvasAgg(self)

    return AggFigure, PIL.Image


_EXTRA_MODULES: Final[tuple[tuple[str, str], ...]] = (("matplotlib", "matplotlib"), ("PIL", "Pillow"))
"""The bench extra's picture modules and the distributions that provide them."""


def _missing_extra_message() -> str:
    """Names every missing distribution, not only the first import that failed: a user
    who installs the one named should not meet the next error straight after."""
    # find_spec, not an import: matplotlib imports Pillow, so importing it would
    # blame matplotlib for a missing Pillow.
    missing = [dist for module, dist in _EXTRA_MODULES if importlib.util.find_spec(module) is None]
    if len(missing) == len(_EXTRA_MODULES):
        what = "neither is installed"
    else:
        what = f"{' and '.join(missing) or 'a part of them'} is not installed"
    return f"pictures need matplotlib and Pillow ({what}): {INSTALL_HINT}"


def ensure_available() -> None:
    """Raise :class:`PlottingUnavailable` now, e.g. before a long run that must plot at its end."""
    _require_extra()


def check_destination(out: Path) -> None:
    """Raise :class:`PictureNotWritten` now for a picture ``files.replacing`` would refuse
    to write at ``out`` (a directory anyone may write without the sticky bit), so that a
    long run is not made only to have its picture refused. A directory that cannot be
    looked at is left for the write to report."""
    try:
        files.check_directory(out.parent)
    except files.UnsafeDirectory as exc:
        raise PictureNotWritten(f"cannot write {quoted(out)}: {exc}") from None
    except OSError:
        pass


@contextmanager
def _writing(out: Path) -> Iterator[IO[bytes]]:
    """The file to write ``out``'s picture into: a new file beside it, renamed over it
    once written (``files.replacing``), so a symlink at ``out`` is replaced rather than
    written through, and a failed write leaves ``out`` as it was."""
    try:
        with files.replacing(out) as file:
            yield file
    except OSError as exc:
        raise PictureNotWritten(f"cannot write {quoted(out)}: {exc.strerror or exc}") from None


# --- the quadrant scatter -----------------------------------------------------------


@dataclass(frozen=True)
class QuadrantSample:
    """The first ``points`` points of one seeded stream and which of them fall inside."""

    seed: int
    stream: int
    xy: np.ndarray
    """float32, shape (points, 2), in the kernel's order."""
    inside: np.ndarray
    """bool, shape (points,)."""

    @property
    def points(self) -> int:
        return len(self.xy)

    @property
    def inside_count(self) -> int:
        return int(np.count_nonzero(self.inside))


def sample_quadrant(seed: int, stream: int, points: int) -> QuadrantSample:
    """The numpy kernel's points for ``(seed, stream)`` and its inside test applied to each."""
    xy = np.empty((points, 2), dtype=np.float32)
    start = 0
    for block in iter_point_blocks(seed, stream, points):
        xy[start : start + len(block)] = block  # the kernel reuses its block buffer
        start += len(block)
    return QuadrantSample(seed=seed, stream=stream, xy=xy, inside=inside_quarter_circle(xy))


def _marker_area(points: int) -> float:
    """Marker area in pt²: dots for a few thousand points, a fine grain for a million."""
    return float(np.clip(30_000 / max(points, 1), 0.12, 10.0))


class _QuadrantFigure:
    """The scatter figure, redrawable for the first ``n`` points (one GIF frame per ``n``)."""

    def __init__(self, figure_class: type[Figure], sample: QuadrantSample) -> None:
        from matplotlib.lines import Line2D
        from matplotlib.patches import Arc

        self.sample = sample
        self._inside_xy = sample.xy[sample.inside]
        self._outside_xy = sample.xy[~sample.inside]
        # inside_before[n] = how many of the first n points are inside, so frame n
        # shows the prefixes inside_xy[:inside_before[n]] and outside_xy[:n - that].
        self._inside_before = np.concatenate(([0], np.cumsum(sample.inside, dtype=np.int64)))
        final = pi_statistics(sample.inside_count, sample.points)
        # One number format for every frame, so the title does not jitter in a GIF.
        self._decimals = _decimals_for(final.half_width)

        self.figure = figure_class(figsize=(5.0, 5.6), dpi=110, layout="constrained")
        ax = self.figure.add_subplot()
        area = _marker_area(sample.points)
        empty = np.empty((0, 2), dtype=np.float32)
        self._inside_dots, self._outside_dots = (
            ax.scatter(empty[:, 0], empty[:, 1], color=colour, s=area, linewidths=0, marker="o", rasterized=True)
            for colour in (INSIDE_COLOUR, OUTSIDE_COLOUR)
        )
        ax.add_patch(Arc((0, 0), 2, 2, theta1=0, theta2=90, color=INK, linewidth=1.6, zorder=3))
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xticks([0, 0.5, 1], labels=["0", "½", "1"])
        ax.set_yticks([0, 0.5, 1], labels=["0", "½", "1"])
        ax.set_xlabel("x")
        ax.set_ylabel("y", rotation=0, labelpad=10)
        for spine in ax.spines.values():
            spine.set_color(MUTED_INK)
        ax.tick_params(colors=MUTED_INK, labelcolor=INK)
        self.figure.legend(
            handles=[
                Line2D([], [], color=colour, label=label, marker="o", linestyle="none", markersize=7)
                for colour, label in ((INSIDE_COLOUR, "inside: x² + y² < 1"), (OUTSIDE_COLOUR, "outside"))
            ],
            loc="outside lower center",
            ncol=2,
            frameon=False,
        )
        self._title = ax.set_title("", fontsize=10.5, color=MUTED_INK, pad=8)
        self._headline = self.figure.suptitle("", fontsize=14, fontweight="bold", color=INK)

    def show_first(self, n: int) -> None:
        inside_n = int(self._inside_before[n])
        self._inside_dots.set_offsets(self._inside_xy[:inside_n])
        self._outside_dots.set_offsets(self._outside_xy[: n - inside_n])
        stats = pi_statistics(inside_n, n)
        d = self._decimals
        self._headline.set_text(f"π ≈ {stats.pi:.{d}f} ± {stats.half_width:.{d}f}  (95%)")
        self._title.set_text(
            f"{inside_n:,} of {n:,} points inside  ·  error {_signed(stats.error, d)}\n"
            f"seed {self.sample.seed}, stream {self.sample.stream}"
        )

    def counts_drawn(self) -> tuple[int, int]:
        """(inside, outside) points the figure currently draws, read back from its artists."""
        return len(np.asarray(self._inside_dots.get_offsets())), len(np.asarray(self._outside_dots.get_offsets()))

    def render_rgb(self, pil_image: Any) -> Image:
        canvas: Any = self.figure.canvas  # an Agg canvas (_require_extra), whose methods are untyped
        canvas.draw()
        image: Image = pil_image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")
        return image


def frame_point_counts(points: int, frames: int) -> list[int]:
    """How many points each GIF frame shows: ``frames`` strictly increasing counts ending at
    ``points``, spaced geometrically so early frames (where the estimate moves most) come
    quickly, and never fewer than one new point per frame. Requires ``1 <= frames <= points``.
    """
    if not 1 <= frames <= points:
        raise ValueError(f"need 1 <= frames <= points, got frames={frames}, points={points}")
    first = max(1, points // 200)
    counts = np.geomspace(first, points, num=frames).round().astype(np.int64)
    counts[-1] = points
    # Push counts up so each frame adds a point, then down so the tail still fits below points.
    counts = np.maximum(counts, np.arange(1, frames + 1))
    counts = np.maximum.accumulate(counts)
    for i in range(1, frames):
        counts[i] = max(counts[i], counts[i - 1] + 1)
    counts = np.minimum(counts, points - np.arange(frames - 1, -1, -1))
    return [int(c) for c in counts]


def save_scatter(sample: QuadrantSample, out: Path, frames: int | None = None) -> Picture:
    """Write the quadrant figure: a PNG of every point, or (``.gif``) ``frames`` frames as
    the points accumulate. Raises :class:`PlottingUnavailable` or :class:`PictureNotWritten`."""
    suffix = out.suffix.lower()
    if suffix not in (".png", ".gif"):
        raise ValueError(f"{out}: the picture must be a .png or a .gif")
    if sample.points < 1:
        raise ValueError("a scatter needs at least one point")
    figure_class, pil_image = _require_extra()
    drawing = _QuadrantFigure(figure_class, sample)
    try:
        if suffix == ".png":
            drawing.show_first(sample.points)
            image = drawing.render_rgb(pil_image)
            image = image.quantize(colors=PALETTE_COLOURS, dither=pil_image.Dither.NONE)
            with _writing(out) as file:
                image.save(file, format="PNG", optimize=True)
            return Picture(out, "png", image.width, image.height, 1)
        return _save_animation(drawing, pil_image, out, frames or 1)
    finally:
        drawing.figure.clear()


def _save_animation(drawing: _QuadrantFigure, pil_image: Any, out: Path, frames: int) -> Picture:
    counts = frame_point_counts(drawing.sample.points, frames)
    # The last frame has every colour any frame uses (all points, every glyph of the
    # title font), so its palette serves all frames: no colour flicker between frames.
    drawing.show_first(counts[-1])
    palette = drawing.render_rgb(pil_image).quantize(colors=PALETTE_COLOURS, dither=pil_image.Dither.NONE)
    # Keep the layout just computed for the full picture: re-running it per frame could
    # shift the axes by a pixel as the title's text changes, and the animation would shake.
    drawing.figure.set_layout_engine("none")
    images = []
    for n in counts:
        drawing.show_first(n)
        rgb = drawing.render_rgb(pil_image)
        images.append(rgb.quantize(palette=palette, dither=pil_image.Dither.NONE))
    frame_ms = int(np.clip(6_000 / frames, 40, 250))
    durations = [frame_ms] * (frames - 1) + [2_500]  # hold the finished picture
    with _writing(out) as file:
        images[0].save(
            file,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=durations,
            loop=0,  # repeat forever
        )
    return Picture(out, "gif", images[0].width, images[0].height, frames)


# --- convergence of an estimate -----------------------------------------------------


def curve_indices(chunks: int, max_points: int = MAX_CURVE_POINTS) -> np.ndarray:
    """Which chunk completions to draw: all of them if few, else ``max_points`` log-spaced
    (evenly spaced on the plot's log axis), always including the first and the last."""
    if chunks <= max_points:
        return np.arange(chunks)
    return np.unique(np.geomspace(1, chunks, num=max_points).round().astype(np.int64)) - 1


def plot_convergence(
    chunk_points: Sequence[int] | np.ndarray,
    chunk_inside: Sequence[int] | np.ndarray,
    out: Path,
    *,
    subtitle: str | None = None,
    max_curve_points: int = MAX_CURVE_POINTS,
) -> Picture:
    """Write a PNG of the running estimate after each completed chunk, against the points
    used so far (log scale), with its 95% confidence band and a line at π.

    ``chunk_points[i]`` and ``chunk_inside[i]`` are the points and the inside count of
    the i-th chunk to complete (``EstimateResult`` keeps them as two ``array('q')``). A
    run of a million chunks draws a curve of ``max_curve_points`` points. Raises
    :class:`PlottingUnavailable` or :class:`PictureNotWritten`.
    """
    if out.suffix.lower() != ".png":
        raise ValueError(f"{out}: the convergence plot is a .png")
    points = np.asarray(chunk_points, dtype=np.int64)
    inside = np.asarray(chunk_inside, dtype=np.int64)
    if points.shape != inside.shape or points.ndim != 1:
        raise ValueError("chunk_points and chunk_inside must be two sequences of one length")
    if points.sum() == 0:
        raise ValueError("a convergence plot needs at least one chunk with points")
    figure_class, _ = _require_extra()

    used = np.cumsum(points)
    inside_so_far = np.cumsum(inside)
    keep = curve_indices(len(points), max_curve_points)
    keep = keep[used[keep] > 0]
    # At most max_curve_points calls: the statistics stay in one place (estimate.py).
    curve = [pi_statistics(int(i), int(n)) for i, n in zip(inside_so_far[keep], used[keep], strict=True)]
    x = used[keep]
    estimate = np.array([stats.pi for stats in curve])
    half_width = np.array([stats.half_width for stats in curve])
    final = curve[-1]
    d = _decimals_for(final.half_width)

    figure = figure_class(figsize=(7.6, 4.4), dpi=110, layout="constrained")
    try:
        ax = figure.add_subplot()
        if len(x) > 1:
            ax.fill_between(
                x, estimate - half_width, estimate + half_width,
                color=INSIDE_COLOUR, alpha=0.18, linewidth=0, label="95% confidence interval",
            )  # fmt: skip
            ax.plot(x, estimate, color=INSIDE_COLOUR, linewidth=1.6, label="running estimate")
        else:  # one chunk: a dot with error bars, since a band over one x is invisible
            ax.errorbar(
                x, estimate, yerr=half_width, fmt="o", color=INSIDE_COLOUR, capsize=4,
                label="estimate, 95% interval",
            )  # fmt: skip
        ax.axhline(math.pi, color=INK, linestyle="--", linewidth=1.1, label="π")
        ax.set_xscale("log")
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        ax.set_xlabel("points used (log scale)")
        ax.set_ylabel("estimate of π")
        ax.grid(True, which="major", color="#e4e4e4", linewidth=0.8)
        ax.set_axisbelow(True)
        ax.legend(loc="best", frameon=False)
        figure.suptitle(
            f"π ≈ {final.pi:.{d}f} ± {final.half_width:.{d}f} (95%)  ·  "
            f"error {_signed(final.error, d)}",
            fontsize=13, fontweight="bold", color=INK,
        )  # fmt: skip
        ax.set_title(
            subtitle or f"{int(used[-1]):,} points in {_plural(len(points), 'chunk')}",
            fontsize=10, color=MUTED_INK,
        )  # fmt: skip
        with _writing(out) as file:
            figure.savefig(file, format="png")
        width, height = (round(v) for v in figure.get_size_inches() * figure.dpi)
    finally:
        figure.clear()
    return Picture(out, "png", width, height, 1)


def estimate_subtitle(
    points: int, chunks: int, workers: int, kernel: str, seed: int, stopped_early: bool
) -> str:
    """The settings beneath the convergence plot's title, in two lines: on one, a
    20-digit seed pushed the line past the figure's edge and it was clipped."""
    run = (
        f"{points:,} points  ·  {_plural(chunks, 'chunk')}  ·  "
        f"{_plural(workers, 'worker')}  ·  {kernel} kernel"
    )
    repeat = f"seed {seed}" + ("  ·  stopped early" if stopped_early else "")
    return f"{run}\n{repeat}"


def plot_estimate(result: EstimateResult, out: Path) -> Picture:
    """:func:`plot_convergence` of a finished ``mcpi estimate`` run, its settings beneath
    the title. Raises :class:`PlottingUnavailable` or :class:`PictureNotWritten`."""
    subtitle = estimate_subtitle(
        result.points, result.chunks, result.workers, result.kernel, result.seed,
        result.stopped_early is not None,
    )  # fmt: skip
    return plot_convergence(result.chunk_points, result.chunk_inside, out, subtitle=subtitle)
