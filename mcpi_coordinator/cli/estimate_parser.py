"""``mcpi estimate``'s parser: its options, their checks and help, and nothing of the run.

``--help``, a usage error and a TAB completion need the parser alone; the run
(``cli.estimate``, with Trio, NumPy, the pool and the launchers behind it) is imported by
the handler once the command line has parsed. So this module imports the standard
library and ``cli``'s light modules only: the numbers the options show come from
``cli.facts``, and the few values that take an owner's code to check (``--part``,
``--host``, ``--ssh-option``) import it when they are given.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any, Final

from mcpi_coordinator import arguments as cli_args
from mcpi_coordinator.cli import commands, facts
from mcpi_worker.quoting import quoted

if TYPE_CHECKING:
    from mcpi_coordinator.launch.remote import HostSpec
    from mcpi_coordinator.run.parts import Part

_POINTS_LIMIT: Final[str] = "beyond 2**53 counts are not exact in JSON readers"

MAX_TOTAL_POINTS: Final[int] = 2**53
"""The most points a run may ask for: counts beyond 2**53 are no longer exact as
doubles, which is how most JSON readers (jq, JavaScript) read ``--json``. It is also
more than this 2-core machine samples in a month."""

MAX_LOCAL_WORKERS: Final[int] = facts.MAX_WORKERS_PER_HOST
"""A typo like ``--workers 100000`` should be an error, not a hundred thousand processes."""

EXAMPLES = """\
examples:
  mcpi estimate                              1e9 points on every core
  mcpi estimate -n 1e10 -s 42                repeatable: same seed, same count
  mcpi estimate --target-error 1e-4          stop once the 95% CI is ±1e-4
  mcpi estimate -n 1e13 --max-time 5 --json  whatever 5 seconds give, as JSON
  mcpi estimate --worker-cmd "python -m mcpi_worker --log-level debug" --log-level info
  mcpi estimate --workers 0 --host alice@node1*4 --host node2:2222*2
                                             6 workers on two machines, over ssh

one run on several coordinators (a Slurm allocation each, say): the same seed,
points and chunk size, one --part each, then add the counts up exactly:
  sbatch --wrap "mcpi estimate --slurm -n 1e12 -s 7 --part 1/2 --json > part1.json"
  sbatch --wrap "mcpi estimate --slurm -n 1e12 -s 7 --part 2/2 --json > part2.json"
  mcpi combine part1.json part2.json         the count of one 1e12-point run, bit for bit

environment: MCPI_WORKER_CMD, MCPI_REMOTE_CMD, MCPI_LOG_LEVEL, MCPI_LOG_FORMAT set the
defaults of --worker-cmd, --remote-cmd, --log-level, --log-format

exit codes: 0 estimate reported (also after an early stop)
            1 the run failed, or the --plot could not be written (one line says why;
              an estimate, if there is one, is printed first)
            2 bad arguments (nothing was started)
            130, 143, 129 stopped by Ctrl-C, SIGTERM, SIGHUP (every worker is stopped first)
            141 the reader of stdout left before the result was written (| true)
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "estimate",
        help=commands.summary("estimate"),
        description=(
            "Estimate pi by Monte Carlo: split the points into seeded chunks, count them\n"
            "on a pool of persistent mcpi-worker processes, and combine the counts. The\n"
            "count depends only on seed, points, chunk size and kernel, never on the\n"
            "number of workers. Counts accept 1e9, 2.5e9 and 1_000_000, read exactly."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-n", "--points", type=cli_args.count_type(1, MAX_TOTAL_POINTS, why=_POINTS_LIMIT),
        default=None, metavar="N",
        help=f"random points to draw (default {facts.DEFAULT_POINTS:,}; with --target-error, as many as "
        "the target can take; at most 2**53)",
    )
    parser.add_argument(
        "-w", "--workers", type=cli_args.count_type(0, MAX_LOCAL_WORKERS, why="local processes"),
        default=None, metavar="W",
        help=f"local worker processes (default: the CPU count, {os.cpu_count() or 1} here; 0 with "
        "--slurm); 0 with --host for remote workers only",
    )
    parser.add_argument(
        "-s", "--seed", type=cli_args.seed, default=None, metavar="S",
        help="seed below 2**64 (default: drawn at random and printed, to repeat the run)",
    )
    parser.add_argument(
        "--chunk-size", type=cli_args.count_type(1, facts.MAX_POINTS, why="the protocol's limit per request"),
        default=None, metavar="C",
        help=f"points per request to a worker (default {facts.DEFAULT_CHUNK_SIZE:,}); part of "
        "what makes a run repeatable",
    )
    parser.add_argument(
        "--kernel", choices=facts.KERNEL_NAMES, default=None,
        help="sampling kernel: numpy (fast, vectorised) or python (the plain loop); "
        f"default {facts.DEFAULT_KERNEL}",
    )
    parser.add_argument(
        "--worker-cmd", metavar="CMD", default=cli_args.env_default("MCPI_WORKER_CMD", None),
        help="command that starts one local worker, shell-split (default: this Python's "
        "mcpi-worker; env MCPI_WORKER_CMD); any program speaking the protocol on stdio "
        "works; {i} becomes the worker's index: --worker-cmd \"kubectl exec -i mcpi-{i} -- mcpi-worker\"",
    )
    parser.add_argument(
        "--pipeline-depth",
        type=cli_args.count_type(1, facts.MAX_INFLIGHT_LIMIT, why="what a worker can queue"),
        default=facts.DEFAULT_PIPELINE_DEPTH, metavar="D",
        help="requests each worker is sent ahead (default %(default)s, capped by what the "
        "worker accepts); it never changes the count. Small chunks go to mcpi-worker as "
        "ranges of many chunks a request; for a worker speaking only protocol version 1, "
        "raise it, to 16 say, for chunks under ~1e5 points, so it never waits for the "
        "coordinator between chunks",
    )
    parser.add_argument(
        "--task-timeout", type=cli_args.number("seconds", unset="the default"), default=None,
        metavar="S",
        help="a worker that leaves a request unanswered this long is killed and replaced, "
        "and the chunk retried (default: 30 s + 1 µs per point of the chunk)",
    )
    parser.add_argument(
        "--startup-timeout", type=cli_args.number("seconds", unset="the default"), default=10.0,
        metavar="S",
        help="time a worker has to start and answer the handshake (default %(default)g s); "
        "a warning names workers still silent after half of it",
    )
    parser.add_argument(
        "--max-time", type=cli_args.number("seconds", unset="no limit"), default=None, metavar="S",
        help="stop after S seconds and report the estimate from the chunks completed",
    )
    parser.add_argument(
        "--target-error", type=cli_args.number(unset="no target"), default=None, metavar="EPS",
        help="stop once the 95%% confidence interval's half-width is at most EPS; without "
        "--points the run goes on until it is: it may draw (2×1.96/EPS)² points, 1.54e9 for "
        "1e-4, and stops near two thirds of that (1.04e9 for 1e-4)",
    )
    parser.add_argument(
        "--part", type=_part_type, default=None, metavar="I/K",
        help="count only part I of the run's K parts (its chunks ⌊n(I-1)/K⌋..⌊nI/K⌋-1 of n) "
        "and report that part's count alone; run every part 1/K..K/K with the same seed, "
        "points, chunk size and kernel (anywhere, any worker count) and add them up with "
        "'mcpi combine' (see the example below); not with --target-error",
    )
    parser.add_argument(
        "--json", action="store_true",
        help="print one JSON object on stdout (its fields: docs/estimate.md, JSON fields)",
    )  # fmt: skip
    parser.add_argument(
        "--plot", type=cli_args.picture_path_type(".png"), default=None, metavar="FILE.png",
        help="after the run, draw the running estimate and its 95%% band against the points "
        f"used (log scale) to FILE.png; needs the 'bench' extra: {facts.INSTALL_HINT}",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true",
        help="print the result only: no progress, notes or warnings on stderr (errors still)",
    )
    parser.add_argument(
        "--no-progress", action="store_true",
        help="no progress line (it is drawn only when stderr is a terminal anyway)",
    )
    parser.add_argument(
        "--log-level", choices=facts.LOG_LEVELS, metavar="LEVEL",
        default=cli_args.env_default("MCPI_LOG_LEVEL", None),
        help=f"least severe log level shown on stderr: {', '.join(facts.LOG_LEVELS)} "
        "(default warning, error with --quiet; env MCPI_LOG_LEVEL)",
    )
    parser.add_argument(
        "--log-format", choices=facts.LOG_FORMATS, default=cli_args.env_default("MCPI_LOG_FORMAT", "console"),
        help="log lines as text (default) or JSON objects (env MCPI_LOG_FORMAT)",
    )
    _add_run_file_arguments(parser)
    cli_args.add_version(parser)
    _add_remote_arguments(parser, cli_args.env_default("MCPI_REMOTE_CMD", facts.DEFAULT_REMOTE_COMMAND))
    parser.add_argument(
        "--slurm", action="store_true",
        help="inside a Slurm allocation (salloc, sbatch): one worker step per node (srun), "
        "each running the worker command with --jobs set to the node's CPUs in the allocation; "
        "adds to --workers (default 0 then) and --host",
    )
    parser.set_defaults(handler=_run, command_parser=parser)


def _part_type(text: str) -> Part:
    from mcpi_coordinator.run.parts import parse_part  # only when --part is given

    try:
        return parse_part(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _fraction(text: str) -> float:
    """A number from 0 to 1."""
    value = cli_args.number(allow_zero=True)(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{quoted(text)} is more than 1; a fraction is from 0 to 1")
    return value


def _add_run_file_arguments(parser: argparse.ArgumentParser) -> None:
    """--verify, --checkpoint and --resume (``cli.runs`` does what they ask)."""
    parser.add_argument(
        "--verify", type=_fraction, default=0.0, metavar="FRACTION",
        help="compute this fraction of the chunks (chosen by the seed) a second time on "
        "another worker, another host if there is one, and compare; a worker caught "
        "giving a wrong count is retired and its unchecked chunks computed again. "
        "1 checks every chunk, so no single wrong worker can change the answer (default 0). "
        "Each checked chunk goes alone, counted more slowly than the ranges between them",
    )  # fmt: skip
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--checkpoint", metavar="FILE", default=None,
        help="record completed chunks in FILE (SQLite, new file) as the run goes, so that "
        "a run that is killed can be carried on with --resume FILE",
    )  # fmt: skip
    group.add_argument(
        "--resume", metavar="FILE", default=None,
        help="carry on the run recorded in FILE (its seed, points, chunk size, kernel, "
        "target and --part), computing only what is missing; ends with the uninterrupted run's count",
    )  # fmt: skip


def _add_remote_arguments(parser: argparse.ArgumentParser, remote_command_default: str) -> None:
    """The remote-worker options of ``mcpi estimate``, in a group of their own.
    ``remote_command_default`` is ``--remote-cmd``'s default (the CLI's may come from
    the environment)."""
    group = parser.add_argument_group(
        "remote workers",
        "Workers on other machines over ssh, mixed with the --workers local ones.\n"
        "Argument vectors only, never a local shell. See docs/remote.md.",
    )
    group.add_argument(
        "--host", type=_host_spec, action="append", default=[], metavar="SPEC",
        help=f"run workers on this host over ssh; SPEC is {facts.SPEC_SYNTAX}, N workers "
        "(default 1); repeatable. --workers 0 with hosts: remote workers only",
    )
    group.add_argument(
        "--hosts-file", metavar="FILE",
        help="read host specs from FILE, one a line; '#' starts a comment",
    )
    group.add_argument(
        "--ssh-option", type=_ssh_option, action="append", default=[], metavar="KEY=VALUE",
        help="passed to ssh as -o KEY=VALUE, e.g. IdentityFile=~/.ssh/mcpi; repeatable",
    )
    group.add_argument(
        "--remote-cmd", default=remote_command_default, metavar="CMD",
        help="the worker command on the hosts, shell-split here and quoted word for word "
        f"for the remote shell (default {facts.DEFAULT_REMOTE_COMMAND}; env MCPI_REMOTE_CMD; ssh "
        "gives it a minimal PATH, so an absolute path like /opt/mcpi/bin/mcpi-worker is safest)",
    )


def _run(args: argparse.Namespace) -> int:
    from mcpi_coordinator.cli import signals

    boot = signals.way_in()  # None: run from a program, which keeps its exit and collector
    if boot is not None:
        boot.exit_at_once()  # its workers are reaped and its files closed when it returns
    from mcpi_coordinator.cli import estimate

    if boot is not None:
        boot.collections_back()  # off while the command imported (boot.hold_collections)
    return estimate.run(args)


def _host_spec(text: str) -> HostSpec:
    from mcpi_coordinator.launch import remote  # only when --host is given

    return remote.host_spec_arg(text)


def _ssh_option(text: str) -> str:
    from mcpi_coordinator.launch import remote  # only when --ssh-option is given

    return remote.ssh_option_arg(text)
