"""The drawing functions: valid files, the kernel's very points, sensible downsampling."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from array import array
from pathlib import Path

import numpy as np
import pytest
from command_line import mcpi
from PIL import Image

from mcpi_coordinator.cli import plots
from mcpi_worker.kernels import BLOCK_POINTS, count_numpy, iter_point_blocks


def assert_png(path: Path, width: int, height: int) -> None:
    assert path.read_bytes()[:8] == plots.PNG_SIGNATURE
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (width, height)
        image.verify()


def kernel_chunks(seed: int, chunks: int, chunk_points: int) -> tuple[list[int], list[int]]:
    """(points, inside) of each chunk of a run, counted by the numpy kernel itself."""
    return [chunk_points] * chunks, [count_numpy(seed, k, chunk_points) for k in range(chunks)]


# --- the scatter's points are the kernel's points -----------------------------------


@pytest.mark.parametrize(
    ("seed", "stream", "points"),
    [(0, 0, 1), (7, 0, 5_000), (2**64 - 1, 12, BLOCK_POINTS + 1_234), (123, 4_000_000, 150_001)],
)
def test_sample_counts_exactly_what_the_numpy_kernel_counts(seed: int, stream: int, points: int) -> None:
    sample = plots.sample_quadrant(seed, stream, points)
    assert sample.points == points
    assert sample.inside_count == count_numpy(seed, stream, points)


def test_sample_is_the_kernels_point_sequence() -> None:
    sample = plots.sample_quadrant(5, 2, BLOCK_POINTS + 10)
    expected = np.concatenate([b.copy() for b in iter_point_blocks(5, 2, BLOCK_POINTS + 10)])
    assert sample.xy.dtype == np.float32
    assert np.array_equal(sample.xy, expected)


# --- scatter files ------------------------------------------------------------------


def test_scatter_png_draws_every_point_in_its_colour(tmp_path: Path) -> None:
    sample = plots.sample_quadrant(7, 3, 30_000)
    picture = plots.save_scatter(sample, tmp_path / "quadrant.png")
    assert (picture.format, picture.frames) == ("png", 1)
    assert_png(picture.path, picture.width, picture.height)
    # Square axes in a portrait figure: room for the title above and the legend below.
    assert 0.8 < picture.width / picture.height < 1.0
    with Image.open(picture.path) as image:
        colours = {rgb for _, rgb in image.convert("RGB").getcolors(maxcolors=1 << 20)}
    inside_rgb = tuple(int(plots.INSIDE_COLOUR[i : i + 2], 16) for i in (1, 3, 5))
    outside_rgb = tuple(int(plots.OUTSIDE_COLOUR[i : i + 2], 16) for i in (1, 3, 5))
    assert inside_rgb in colours and outside_rgb in colours


def test_every_animation_frame_draws_the_kernels_count_for_its_prefix() -> None:
    figure_class, _ = plots._require_extra()
    seed, stream, points = 11, 5, 9_000
    drawing = plots._QuadrantFigure(figure_class, plots.sample_quadrant(seed, stream, points))
    for n in plots.frame_point_counts(points, 12):
        drawing.show_first(n)
        inside, outside = drawing.counts_drawn()
        assert inside == count_numpy(seed, stream, n)
        assert inside + outside == n


def test_scatter_gif_has_the_requested_frames(tmp_path: Path) -> None:
    sample = plots.sample_quadrant(3, 0, 4_000)
    picture = plots.save_scatter(sample, tmp_path / "quadrant.gif", frames=9)
    assert picture.path.read_bytes()[:6] == plots.GIF_SIGNATURE
    with Image.open(picture.path) as image:
        assert image.format == "GIF"
        assert image.n_frames == 9
        assert image.size == (picture.width, picture.height)
        assert image.info["loop"] == 0
        durations = []
        for index in range(image.n_frames):
            image.seek(index)
            durations.append(image.info["duration"])
    assert durations[-1] > durations[0]  # the finished picture is held


@pytest.mark.parametrize(("points", "frames"), [(1, 1), (5, 5), (6, 5), (40, 40), (1_000_000, 200)])
def test_frame_counts_grow_strictly_and_end_with_every_point(points: int, frames: int) -> None:
    counts = plots.frame_point_counts(points, frames)
    assert len(counts) == frames
    assert counts[0] >= 1 and counts[-1] == points
    assert all(a < b for a, b in itertools.pairwise(counts))


def test_frame_counts_come_quickly_at_first() -> None:
    counts = plots.frame_point_counts(100_000, 40)
    assert counts[0] == 500
    assert counts[20] < 100_000 / 4  # geometric, not linear


def test_frame_counts_reject_more_frames_than_points() -> None:
    with pytest.raises(ValueError):
        plots.frame_point_counts(3, 4)


# --- convergence --------------------------------------------------------------------


def test_convergence_png_from_kernel_chunks(tmp_path: Path) -> None:
    points, inside = kernel_chunks(seed=5, chunks=60, chunk_points=50_000)
    picture = plots.plot_convergence(points, inside, tmp_path / "convergence.png")
    assert (picture.format, picture.frames) == ("png", 1)
    assert_png(picture.path, picture.width, picture.height)
    assert picture.width > picture.height


def test_convergence_of_a_single_chunk(tmp_path: Path) -> None:
    picture = plots.plot_convergence([1_000], [790], tmp_path / "one.png")
    assert_png(picture.path, picture.width, picture.height)


def test_convergence_of_a_million_chunks(tmp_path: Path) -> None:
    # A 1e13-point run in chunks of 1e7; the curve is drawn at log-spaced chunk counts
    # (see curve_indices), so this takes well under a second.
    rng = np.random.default_rng(0)
    chunk_points = 10_000_000
    inside = rng.binomial(chunk_points, math.pi / 4, size=1_000_000)
    points = array("q", [chunk_points]) * len(inside)  # as EstimateResult keeps them
    picture = plots.plot_convergence(points, array("q", inside), tmp_path / "million.png")
    assert_png(picture.path, picture.width, picture.height)


def test_curve_indices_are_log_spaced_and_keep_the_ends() -> None:
    assert plots.curve_indices(5, max_points=10).tolist() == [0, 1, 2, 3, 4]
    indices = plots.curve_indices(1_000_000, max_points=2_000)
    assert len(indices) <= 2_000
    assert indices[0] == 0 and indices[-1] == 999_999
    assert np.all(np.diff(indices) > 0)
    # Evenly spaced in log: about as many points in each decade of chunks.
    decades = np.histogram(np.log10(indices + 1), bins=[0, 2, 4, 6])[0]
    assert decades[1] > 500 and decades[2] > 500


def test_convergence_rejects_empty_input_and_other_formats(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        plots.plot_convergence([], [], tmp_path / "empty.png")
    with pytest.raises(ValueError):
        plots.plot_convergence([10, 10], [8], tmp_path / "mismatched.png")
    with pytest.raises(ValueError):
        plots.plot_convergence([10], [8], tmp_path / "plot.jpg")


def test_unwritable_file_is_one_project_error(tmp_path: Path) -> None:
    taken = tmp_path / "taken.png"
    taken.mkdir()
    with pytest.raises(plots.PictureNotWritten, match="cannot write"):
        plots.plot_convergence([10], [8], taken)
    with pytest.raises(plots.PictureNotWritten, match="cannot write"):
        plots.save_scatter(plots.sample_quadrant(1, 0, 10), taken)


# --- mcpi estimate --plot -----------------------------------------------------------


def run_cli(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``mcpi`` in a child process: a real run with real ``mcpi-worker`` processes."""
    return mcpi(*argv, timeout=timeout)


@pytest.mark.slow
def test_estimate_plot_end_to_end_with_real_workers(tmp_path: Path) -> None:
    plot = tmp_path / "convergence.png"
    result = run_cli(
        "estimate", "--points", "2e6", "--chunk-size", "1e5", "--workers", "2",
        "--seed", "3", "--json", "--plot", str(plot),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # --plot leaves stdout one JSON object
    assert report["inside"] == sum(count_numpy(3, k, 100_000) for k in range(20))
    assert result.stderr == f"mcpi estimate: wrote {plot} (836×484 px)\n"
    with Image.open(plot) as image:
        assert image.format == "PNG"
        assert image.width > image.height > 300
    assert plot.read_bytes()[:8] == plots.PNG_SIGNATURE


def test_estimate_plot_needs_a_png_path(tmp_path: Path) -> None:
    result = run_cli("estimate", "--points", "1e5", "--plot", str(tmp_path / "plot.jpg"))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "must end in .png" in errors[0]


def test_estimate_plot_without_the_extra_fails_before_any_worker_starts(tmp_path: Path) -> None:
    started = tmp_path / "a-worker-started"
    worker = f"{sys.executable} -c \"open({str(started)!r}, 'w')\""
    script = (
        "import sys\n"
        "sys.modules['matplotlib'] = None\n"
        "from mcpi_coordinator.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "estimate", "--points", "1e5", "--seed", "1",
         "--worker-cmd", worker, "--plot", str(tmp_path / "plot.png")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert "pip install -e '.[bench]' in mcpi's source tree" in result.stderr and "Traceback" not in result.stderr
    assert not started.exists()


@pytest.mark.slow
def test_estimate_result_is_kept_when_the_plot_cannot_be_written(tmp_path: Path) -> None:
    # The directory passes the check before the run and is gone when the plot is
    # written: the worker command removes it before it starts the real worker.
    gone = tmp_path / "gone"
    gone.mkdir()
    worker = f"sh -c 'rmdir {gone} && exec {sys.executable} -m mcpi_worker'"
    result = run_cli(
        "estimate", "--points", "1e5", "--workers", "1", "--seed", "2", "--json",
        "--worker-cmd", worker, "--plot", str(gone / "plot.png"),
    )  # fmt: skip
    assert result.returncode == 1  # documented: 1 also when a requested output failed
    assert json.loads(result.stdout)["inside"] == count_numpy(2, 0, 100_000)
    assert result.stderr == (
        f"mcpi estimate: error: cannot write {str(gone / 'plot.png')!r}: No such file or "
        "directory (the estimate above is complete)\n"
    )


def test_a_plot_path_that_cannot_be_written_is_refused_before_the_run(tmp_path: Path) -> None:
    taken = tmp_path / "taken.png"
    taken.mkdir()
    result = run_cli("estimate", "--points", "1e5", "--plot", str(taken))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"mcpi estimate: error: argument --plot: {str(taken)!r} is a directory "
        "(see 'mcpi estimate --help')\n"
    )


def test_the_convergence_subtitle_fits_with_a_20_digit_seed() -> None:
    # 87 characters fit the 836-pixel figure at the subtitle's size (checked by eye on
    # the worst case below); on one line, a 20-digit seed ran past the edge and was clipped.
    subtitle = plots.estimate_subtitle(2**53, 900_719_926, 1024, "python", 2**64 - 1, True)
    assert subtitle.splitlines()[1] == "seed 18446744073709551615  ·  stopped early"
    assert max(len(line) for line in subtitle.splitlines()) <= 87
