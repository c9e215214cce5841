"""``mcpi combine``: add up the parts of one run, counted by different coordinators.

Exit codes: 0 the run's estimate was printed; 2 the files given do not make one whole
run (a part missing or given twice, parts of different runs, a part that stopped early,
a file that is not such output): one line names the file, nothing is printed on stdout.
2 rather than 1 because nothing failed to run: the input is wrong, as with a bad option.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from mcpi_coordinator import arguments as cli_args
from mcpi_coordinator.cli import commands, text
from mcpi_coordinator.cli.exit_codes import McpiExitCode
from mcpi_worker.quoting import quoted

# What combining needs is imported where it is used: parsing (--help, a usage error,
# a TAB completion) imports none of it (``cli.commands``).
if TYPE_CHECKING:
    from mcpi_coordinator.run.parts import Combined

PROG = "mcpi combine"

DESCRIPTION = """\
Combine the parts of one run into its estimate. Each part is the --json output of
'mcpi estimate --part I/K' with the same seed, points, chunk size and kernel, run by
any coordinator (another Slurm allocation, another site, another day) on any number
of workers. The parts' counts add up exactly: the result is bit for bit the count,
π, standard error and 95% interval of the whole run on one coordinator.

Refused, with one line naming the file (exit 2): a part missing or given twice,
parts of different runs, a part that stopped early (--max-time), a file that is not
such output or whose numbers do not fit its part. A whole run's --json (no --part)
given alone combines to itself."""

EPILOG = """\
examples:
  # two Slurm allocations, one part each (same -n, -s, --chunk-size, --kernel):
  sbatch --wrap "mcpi estimate --slurm -n 1e12 -s 7 --part 1/2 --json > part1.json"
  sbatch --wrap "mcpi estimate --slurm -n 1e12 -s 7 --part 2/2 --json > part2.json"
  mcpi combine part1.json part2.json       # = mcpi estimate -n 1e12 -s 7, bit for bit
  cat part*.json | mcpi combine -          # '-' reads the parts from stdin (one JSON per line)

exit codes: 0 the run's estimate was printed
            2 the files do not make one whole run (one line names the file and why)"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "combine",
        help=commands.summary("combine"),
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "files", nargs="+", metavar="FILE",
        help="a part's 'mcpi estimate --part I/K --json' output; - reads stdin (one JSON object a line)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    cli_args.add_version(parser)
    parser.set_defaults(handler=run, command_parser=parser)


MAX_FILE_BYTES: Final[int] = 4 * 2**20
"""The most a file given to combine may hold: a part's --json is a few KiB (its
per-worker rows take ~200 bytes a worker: ~200 KiB for 1,024 workers). Read no
further, so /dev/zero or a 1 GiB file is one line, not minutes of reading and a
MemoryError."""
MAX_STDIN_BYTES: Final[int] = 16 * MAX_FILE_BYTES
"""The most stdin may hold: several parts, one a line."""


def read_documents(files: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(name, document) of each file; stdin may hold several, one a line. Raises
    ``CombineRefused`` (one line) for a file that cannot be read, is larger than
    ``MAX_FILE_BYTES``, is not UTF-8 or not the JSON mcpi writes."""
    from mcpi_coordinator.files import read_limited, read_stream_limited
    from mcpi_coordinator.run.parts import CombineRefused, load_document

    if files.count("-") > 1:
        raise CombineRefused("- (stdin) is given more than once")
    documents = []
    for name in files:
        if name == "-":
            content = _read("stdin", partial(read_stream_limited, sys.stdin.buffer, MAX_STDIN_BYTES))
            lines = [line for line in content.splitlines() if line.strip()]
            if not lines:
                raise CombineRefused("stdin: empty, no part to combine")
            names = ["stdin"] if len(lines) == 1 else [f"stdin line {n}" for n in range(1, len(lines) + 1)]
            documents += [(shown, load_document(shown, line)) for shown, line in zip(names, lines, strict=True)]
            continue
        shown = quoted(name, quote=False)  # a name too long to quote whole, shortened
        content = _read(shown, partial(read_limited, name, MAX_FILE_BYTES))
        if not content.strip():  # a shell's '> part1.json' of a run that failed or is still going
            raise CombineRefused(
                f"{shown}: empty: did its 'mcpi estimate --part ... --json > {shown}' fail, or not end yet?"
            )
        documents.append((shown, load_document(shown, content)))
    return documents


def _read(name: str, read: Callable[[], bytes]) -> str:
    from mcpi_coordinator.files import NotRegular, TooLarge
    from mcpi_coordinator.run.parts import MCPI_WRITES, CombineRefused

    try:
        return read().decode("utf-8")
    except TooLarge as error:
        raise CombineRefused(f"{name}: {error}: not the JSON {MCPI_WRITES} prints") from None
    except NotRegular as error:
        raise CombineRefused(f"{name}: {error}; give what it holds on stdin with - instead") from None
    except UnicodeDecodeError:
        raise CombineRefused(f"{name}: not text, so not the JSON {MCPI_WRITES} prints") from None
    except OSError as error:
        raise CombineRefused(f"{name}: cannot read it: {error.strerror or error}") from None


def run(args: argparse.Namespace) -> int:
    from mcpi_coordinator.run.parts import CombineRefused, combine

    try:
        combined = combine(read_documents(args.files))
    except CombineRefused as error:
        text.say(PROG, f"error: {error}")
        return McpiExitCode.USAGE
    if args.json:
        print(json.dumps(combined_json(combined)))
    else:
        print_combined(combined)
    return McpiExitCode.OK


def _repeat(combined: Combined) -> str:
    from mcpi_coordinator.run.estimate import repeat_command

    key = combined.key
    return repeat_command(key.requested_points, key.seed, key.chunk_size, key.kernel)


def combined_json(combined: Combined) -> dict[str, Any]:
    """The fields of ``mcpi estimate --json`` that a sum of parts has, and the parts."""
    from mcpi_coordinator.cli.estimate_json import estimate_fields

    key = combined.key
    return {
        **estimate_fields(combined.inside, combined.points),
        "inside": combined.inside,
        "points": combined.points,
        "requested_points": key.requested_points,
        "seed": key.seed,
        "chunk_size": key.chunk_size,
        "chunks": combined.chunks,
        "kernel": key.kernel,
        "workers": sum(part.workers for part in combined.parts),
        "stopped_early": None,
        "repeat_points": combined.points,
        "repeat_command": _repeat(combined),
        "parts": [
            {
                "index": part.part.index,
                "of": part.part.of,
                "file": part.source,
                "first_chunk": part.first_chunk,
                "chunks": part.chunks,
                "inside": part.inside,
                "points": part.points,
                "workers": part.workers,
                "elapsed_s": part.elapsed_s,
            }
            for part in combined.parts
        ],
    }


def print_combined(combined: Combined) -> None:
    from mcpi_coordinator.cli.estimate_text import estimate_rows, points_text

    key = combined.key
    parts = "; ".join(
        f"{p.part.index} {p.source} (chunks {p.first_chunk:,}..{p.first_chunk + p.chunks - 1:,})"
        for p in combined.parts
    )
    rows = [
        *estimate_rows(combined.inside, combined.points),
        ("points", points_text(combined.points, combined.chunks, key.chunk_size)),
        ("parts", f"all {key.parts} combined: {parts}"),
        ("workers", f"{sum(p.workers for p in combined.parts)} in all"),
        ("seed", str(key.seed)),
        ("kernel", key.kernel),
    ]
    print(text.rows_text(rows))
    print(f"same count as: {_repeat(combined)}")  # never wrapped: meant to be copied
