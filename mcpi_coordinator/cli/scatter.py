"""``mcpi scatter``: the lesson's quadrant figure, drawn from the very points a run samples."""

from __future__ import annotations

import argparse
import json
import secrets
from pathlib import Path

from mcpi_coordinator import arguments as cli_args
from mcpi_coordinator.cli import commands, text
from mcpi_coordinator.cli.exit_codes import McpiExitCode
from mcpi_coordinator.cli.facts import INSTALL_HINT, MAX_FRAMES, MAX_SCATTER_POINTS
from mcpi_worker.quoting import quoted

DEFAULT_POINTS = 20_000
DEFAULT_FRAMES = 40
DEFAULT_OUT = Path("mcpi-scatter.png")
_picture_path = cli_args.picture_path_type(".png", ".gif")

DESCRIPTION = """\
Draw random points on the unit square, the ones inside the quarter circle
(x² + y² < 1) in one colour and the rest in another, with the estimate of π and
its 95% interval in the title. The fraction inside tends to π/4.

The points are the numpy kernel's own: stream K of seed S, exactly as a run of
'mcpi estimate --seed S' samples its chunk K, so the picture's inside count equals
the count a worker returns for that chunk (or for its first N points).

With an --out ending in .gif, the picture is an animation of --frames frames in
which the points accumulate, spaced so the early, jumpy estimates come quickly."""

EPILOG = f"""\
examples:
  mcpi scatter --points 5000 --seed 7 --out quadrant.png
  mcpi scatter --points 20000 --seed 7 --out quadrant.gif --frames 40
  mcpi scatter --json

Needs the 'bench' extra (matplotlib, Pillow): {INSTALL_HINT}

exit codes: 0 the picture was written
            1 it could not be (the extra is missing, or the file cannot be written)
            2 bad arguments (nothing was drawn)
            130, 143, 129 stopped by Ctrl-C, SIGTERM, SIGHUP"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "scatter",
        help=commands.summary("scatter"),
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-n", "--points", default=DEFAULT_POINTS, metavar="N",
        type=cli_args.count_type(1, MAX_SCATTER_POINTS, why="beyond that the quadrant is a solid fill"),
        help=f"points to draw, 1 to {MAX_SCATTER_POINTS:,} (default {DEFAULT_POINTS:,};"
        " accepts 1e5, 100_000)",
    )  # fmt: skip
    parser.add_argument(
        "-s", "--seed", type=cli_args.seed, default=None, metavar="S",
        help="seed of the random streams (default: drawn at random and printed)",
    )  # fmt: skip
    parser.add_argument(
        "--stream", type=cli_args.stream, default=0, metavar="K",
        help="which stream of the seed, i.e. which chunk of a run (default 0)",
    )  # fmt: skip
    parser.add_argument(
        "-o", "--out", type=_picture_path, default=DEFAULT_OUT, metavar="FILE",
        help=f"FILE.png for a picture, FILE.gif for an animation (default {DEFAULT_OUT})",
    )  # fmt: skip
    parser.add_argument(
        "--frames", default=None, metavar="K",
        type=cli_args.count_type(1, MAX_FRAMES, why="every frame is held in memory"),
        help=f"frames of a .gif animation, 1 to {MAX_FRAMES} (default {DEFAULT_FRAMES})",
    )  # fmt: skip
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object on stdout instead of text"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print the result only: no note of the file written"
    )
    cli_args.add_version(parser)
    parser.set_defaults(handler=run, command_parser=parser)


PROG = "mcpi scatter"


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    is_gif = out.suffix.lower() == ".gif"
    if args.frames is not None and not is_gif:
        args.command_parser.error(f"--frames needs a .gif output, not {quoted(out)}")
    frames = (args.frames or min(DEFAULT_FRAMES, args.points)) if is_gif else 1
    if frames > args.points:
        args.command_parser.error(
            f"--frames {frames} is more than --points {args.points}: every frame adds a point"
        )
    seed = args.seed if args.seed is not None else secrets.randbits(64)
    # Here, not at the top: parsing (--help, a usage error) never needs NumPy.
    from mcpi_coordinator.cli import plots
    from mcpi_coordinator.errors import McpiError
    from mcpi_coordinator.run.estimate import pi_statistics

    try:
        plots.ensure_available()  # before sampling: fail fast on a missing extra
        sample = plots.sample_quadrant(seed, args.stream, args.points)
        picture = plots.save_scatter(sample, out, frames=frames if is_gif else None)
    except McpiError as exc:  # the extra is missing, or the file cannot be written
        text.say(PROG, f"error: {exc}")
        return McpiExitCode.FAILURE

    inside = sample.inside_count
    stats = pi_statistics(inside, sample.points)
    if args.json:
        report = {
            "out": str(picture.path),
            "format": picture.format,
            "width": picture.width,
            "height": picture.height,
            "frames": picture.frames,
            "points": sample.points,
            "inside": inside,
            "seed": seed,
            "stream": args.stream,
            "pi": stats.pi,
            "std_error": stats.std_error,
            "ci95": list(stats.ci95),
            "error": stats.error,
        }
        print(json.dumps(report))
    else:
        print(
            f"{inside:,} of {sample.points:,} points inside: π ≈ {stats.pi:.5f} ± {stats.half_width:.5f}"
            f" (95%), seed {seed}, stream {args.stream}"
        )
    if not args.quiet:
        what = f"{picture.frames} frames, " if picture.format == "gif" else ""
        text.say(PROG, f"wrote {picture.path} ({what}{picture.width}×{picture.height} px)")
    return McpiExitCode.OK
