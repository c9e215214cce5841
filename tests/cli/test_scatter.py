"""``mcpi scatter`` end to end: files, counts, argument errors, a missing extra."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from mcpi_coordinator.cli import main as cli
from mcpi_coordinator.cli import plots
from mcpi_worker.kernels import BLOCK_POINTS, count_numpy


def run_mcpi(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_png_json_reports_the_kernels_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    points = BLOCK_POINTS + 4_464  # crosses a kernel block boundary
    out_file = tmp_path / "quadrant.png"
    argv = ["scatter", "--points", "70_000", "--seed", "42", "--stream", "3", "--out", str(out_file)]
    code, out, err = run_mcpi([*argv, "--json"], capsys)
    assert (code, err) == (0, f"mcpi scatter: wrote {out_file} (550×616 px)\n")
    report = json.loads(out)
    assert report["inside"] == count_numpy(42, 3, points)
    assert (report["points"], report["seed"], report["stream"]) == (points, 42, 3)
    assert report["pi"] == 4 * report["inside"] / points
    assert report["ci95"][0] < report["pi"] < report["ci95"][1]
    assert report["out"] == str(out_file) and report["format"] == "png"
    assert out_file.read_bytes()[:8] == plots.PNG_SIGNATURE
    with Image.open(out_file) as image:
        assert image.size == (report["width"], report["height"])


def test_gif_has_k_frames(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "quadrant.gif"
    code, out, _ = run_mcpi(
        ["scatter", "-n", "3e3", "--seed", "1", "--out", str(out_file), "--frames", "7", "--json"],
        capsys,
    )
    assert code == 0
    report = json.loads(out)
    assert report["frames"] == 7 and report["inside"] == count_numpy(1, 0, 3_000)
    assert out_file.read_bytes()[:6] == plots.GIF_SIGNATURE
    with Image.open(out_file) as image:
        assert image.n_frames == 7
        assert image.size == (report["width"], report["height"])


def test_human_output_names_the_file_and_the_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "q.png"
    code, out, err = run_mcpi(["scatter", "-n", "2000", "--seed", "9", "-o", str(out_file)], capsys)
    # The result on stdout, the note of the file written on stderr, as every command does.
    assert (code, err) == (0, f"mcpi scatter: wrote {out_file} (550×616 px)\n")
    assert out.startswith(f"{count_numpy(9, 0, 2_000):,} of 2,000 points inside: π ≈ ")
    assert out.endswith(", seed 9, stream 0\n") and out.count("\n") == 1
    code, out, err = run_mcpi(["scatter", "-n", "2000", "--seed", "9", "-o", str(out_file), "-q"], capsys)
    assert (code, err) == (0, "") and out.count("\n") == 1


def test_without_a_seed_one_is_drawn_and_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_mcpi(["scatter", "-n", "500", "-o", str(tmp_path / "q.png"), "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert report["inside"] == count_numpy(report["seed"], 0, 500)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "quadrant.jpg"], "must end in .png or .gif"),
        (["--points", "2e6"], "'2e6' is too large; the most is 1,000,000 (beyond that the quadrant is a solid fill)"),
        (["--points", "0"], "'0' is too small; give at least 1"),
        (["--points", "lots"], "not a whole number"),
        (["--out", "q.gif", "--frames", "0"], "'0' is too small; give at least 1"),
        (["--out", "q.gif", "--frames", "100000"], "the most is 200 (every frame is held in memory)"),
        (["--stream", "1e30"], "'1e30' is too large; the most is 18,446,744,073,709,551,615"),
        (["--stream", "1.5"], "'1.5' is not a whole number"),
        (["--out", "q.gif", "--points", "10", "--frames", "11"], "more than --points"),
        (["--out", "q.png", "--frames", "5"], "needs a .gif"),
        (["--out", "no/such/dir/q.png"], "does not exist"),
        (["--seed", "-1"], "negative"),
    ],
)
def test_bad_arguments_exit_2_with_one_error_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)  # relative --out paths land here, if anything were written
    code, out, err = run_mcpi(["scatter", *args], capsys)
    assert code == 2
    assert out == ""
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and message in error_lines[0], err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_an_output_path_that_is_a_directory_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "taken.png"
    taken.mkdir()  # a directory where the file should go
    code, out, err = run_mcpi(["scatter", "-n", "100", "-o", str(taken)], capsys)
    assert (code, out) == (2, "")
    assert err == (
        f"mcpi scatter: error: argument -o/--out: {str(taken)!r} is a directory "
        "(see 'mcpi scatter --help')\n"
    )


MISSING_EXTRA_SCRIPT = textwrap.dedent(
    """
    import sys
    for module in {modules!r}:
        sys.modules[module] = None  # what Python does for a package that is not installed
    from mcpi_coordinator.cli.main import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.parametrize(
    ("modules", "missing"),
    [
        (["matplotlib"], "matplotlib is not installed"),
        (["PIL"], "Pillow is not installed"),
        (["matplotlib", "PIL"], "neither is installed"),
    ],
)
def test_missing_extra_exits_1_with_one_line_naming_it(
    modules: list[str], missing: str, tmp_path: Path
) -> None:
    out_file = tmp_path / "q.png"
    result = subprocess.run(
        [sys.executable, "-c", MISSING_EXTRA_SCRIPT.format(modules=modules),
         "scatter", "-n", "100", "-o", str(out_file)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert "pip install -e '.[bench]' in mcpi's source tree" in result.stderr
    assert result.stderr == (
        f"mcpi scatter: error: pictures need matplotlib and Pillow ({missing}): "
        "pip install -e '.[bench]' in mcpi's source tree\n"
    )
    assert not out_file.exists()
