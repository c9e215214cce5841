"""``mcpi-worker``'s command line, run by ``mcpi_worker.boot.main``, the one way in (the
``mcpi-worker`` command and ``python -m mcpi_worker``).

Order matters at start-up, and ``main`` keeps it:

0. ``mcpi_worker.boot`` has already asked Linux to signal us when our parent dies, as
   a backstop to stdin EOF, before this module's imports. This module does not import
   ``boot`` (``boot`` imports it) and is not a way in itself.
1. Parse arguments (``--help`` and ``--version`` still print to the real stdout).
2. Move the protocol to a private duplicate of fd 1 and point fd 1 at stderr, so a
   stray ``print`` (ours, a library's, or a child process's) cannot corrupt frames.
3. Configure logging for stderr, before the first log call (structlog itself is
   imported by the first line that passes the level: ``mcpi_worker.logs``).
4. Serve until EOF, ``shutdown``, or a fatal protocol error.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, NoReturn

from mcpi_worker import __version__
from mcpi_worker.constants import EXPECTED_POINTS, MAX_INFLIGHT_LIMIT
from mcpi_worker.kernels import (
    NUMPY_KERNEL,
    KernelConfigError,
    kernel_implementations,
    prepare_kernels,
    welcome_implementations,
)
from mcpi_worker.logs import LOG_FORMATS, LOG_LEVELS, configure_logging, get_logger
from mcpi_worker.protocol import MAX_JOBS, Sample  # --jobs' bound is the protocol's (Welcome.jobs)
from mcpi_worker.quoting import quoted, shortened_in
from mcpi_worker.server import DEFAULT_MAX_INFLIGHT, DEFAULT_SPIN_S, ExitCode, Worker

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

log = get_logger("mcpi_worker")

IN_A_TERMINAL: Final[str] = """\
mcpi-worker: stdin is a terminal, but this program speaks a binary protocol meant for \
another program (mcpi estimate, or yours: see protocol.md).
To see it work:      mcpi-worker --self-check
To run an estimate:  mcpi estimate
To drive it by hand: pipe frames to it (the dozen-line Python client in docs/worker.md)."""

MAX_SPIN_US: Final[int] = 10_000

BROKEN_PIPE: Final[int] = 128 + signal.SIGPIPE
"""141: the reader of stdout left before ``--help``, ``--version`` or the self-check's report
was written (``mcpi-worker --help | true``). Nothing is said: a reader that went away is no
error worth a line, and a shell reports a tool that SIGPIPE ended so (``mcpi`` does the
same, ``McpiExitCode.BROKEN_PIPE``). Not the serving worker's: its stdout is the protocol,
and a coordinator that closed it ended the connection (exit 0, protocol.md §10.3)."""

MAX_HINT_DIGITS: Final[int] = len(str(2**64 - 1))
"""The most digits of ``constants.EXPECTED_POINTS`` acted on: the ``hello``'s hint is a uint64."""


class _Parser(argparse.ArgumentParser):
    _words: Sequence[str] = ()

    def parse_known_args(  # type: ignore[override]  # typeshed's overloads; same signature
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._words = list(sys.argv[1:] if args is None else args)  # for error(): what was typed
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: callers are often programs. A long value
        # argparse quoted whole (an invalid choice) is shortened (``quoting``).
        message = shortened_in(message, self._words)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message} (see --help)\n")

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        # argparse drops an OSError here. --help or --version on a stdout that takes
        # nothing (a full device, a closed descriptor) then ended in the interpreter's
        # flush at exit: "Exception ignored" and exit 120, or, unbuffered
        # (PYTHONUNBUFFERED=1), exit 0 without a word. One line and exit 1 instead, as
        # the self-check's report on such a stdout. A reader that left (EPIPE): exit 141
        # without a word (BROKEN_PIPE), where it said "cannot write" and exited 1.
        out = sys.stderr if file is None else file
        stdout = out is sys.stdout
        try:
            out.write(message)
            if stdout:
                sys.stdout.flush()
        except OSError as exc:
            if not stdout:
                return  # stderr closed or full: the exit code still says it
            _drop_unwritten_stdout()
            if isinstance(exc, BrokenPipeError):
                self.exit(BROKEN_PIPE)
            self.exit(ExitCode.INTERNAL, f"mcpi-worker: cannot write to stdout: {exc.strerror}\n")


def terminal_columns() -> int:
    """The width ``shutil.get_terminal_size`` gives (``COLUMNS`` if a positive number, else
    the terminal on stdout's, else 80), without importing ``shutil``: ``_Formatter``."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter, its width given (``terminal_columns``, less 2 as argparse
    takes it). argparse makes a formatter for every ``add_argument`` (to check the
    argument's metavar), and one left to find its width imports ``shutil`` (and the
    compression modules ``shutil`` imports): CPU at every worker's start, before it can
    answer its ``hello``, for help that a worker started by a program never prints."""

    def __init__(
        self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None
    ) -> None:
        super().__init__(prog, indent_increment, max_help_position, terminal_columns() - 2 if width is None else width)


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            # Past 4,300 digits int() refuses even a number: that is out of range.
            if text.strip().lstrip("+-").isdecimal():
                raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {quoted(text)}") from None
            raise argparse.ArgumentTypeError(f"not an integer: {quoted(text)}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        return value

    return parse


def _jobs(text: str) -> int:
    if text == "auto":
        from mcpi_worker.cpus import usable_cpus

        return min(usable_cpus(), MAX_JOBS)
    return _bounded_int(1, MAX_JOBS)(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mcpi-worker",
        formatter_class=_Formatter,
        description=(
            "Monte Carlo sampling worker. Reads length-framed msgpack requests on stdin "
            "and writes responses on stdout; logs go to stderr. Meant to be started by a "
            "coordinator (mcpi, or your own program: see protocol.md). Run with "
            "--self-check to see it work."
        ),
        epilog=(
            "exit codes: 0 orderly end (stdin EOF or shutdown), 1 internal crash, "
            "2 usage error (or started in a terminal), 3 fatal protocol error, "
            "141 the reader of stdout left before --help, --version or --self-check wrote to it (| true)"
        ),
    )
    parser.add_argument(
        "--max-inflight",
        type=_bounded_int(1, MAX_INFLIGHT_LIMIT),
        default=DEFAULT_MAX_INFLIGHT,
        metavar="N",
        help=f"sample requests accepted at once; more are answered 'busy' "
        f"(default {DEFAULT_MAX_INFLIGHT})",
    )
    parser.add_argument(
        "--jobs",
        type=_jobs,
        default=1,
        metavar="N",
        help="samples computed at once, each on a thread of its own (a kernel that "
        "releases the GIL, as numpy's does, runs them in parallel); 'auto': the CPUs this "
        f"process may use (affinity, cgroup quota, SLURM_CPUS_PER_TASK). 1 to {MAX_JOBS} "
        "(default 1)",
    )
    parser.add_argument(
        "--spin-us",
        type=_bounded_int(0, MAX_SPIN_US),
        default=round(DEFAULT_SPIN_S * 1e6),
        metavar="US",
        help="when idle after answering, and while some CPU of the machine is idle, poll "
        "stdin this many microseconds before sleeping, so that a quick next request does "
        "not have to wake the worker "
        f"(0: sleep at once; default {round(DEFAULT_SPIN_S * 1e6)})",
    )
    parser.add_argument(
        "--log-level",
        choices=tuple(LOG_LEVELS),
        default="info",
        metavar="LEVEL",
        help=f"least severe level logged on stderr: {', '.join(LOG_LEVELS)} (default info)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="json",
        help="stderr log lines as JSON objects (default) or human-readable text",
    )
    parser.add_argument(
        "--self-check",
        action="store_true",
        help="run a few requests through the protocol in-process, print a summary, exit",
    )
    parser.add_argument("--version", action="version", version=f"mcpi-worker {__version__}")
    # Test hook: before each sample, write to stdout three ways (print, a raw write to
    # fd 1, a child process). The tests check none of it reaches the protocol stream.
    parser.add_argument("--test-stray-output", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    parent_death_unavailable: str | None = None,
    imports_done: Callable[[], None] | None = None,
    started: Callable[[], None] | None = None,
) -> int:
    """Run the worker; return its exit code. ``boot.main`` calls it once the parent-death
    backstop is armed, with why it could not be (``parent_death_unavailable``; None if
    it was), to be logged once logging is configured, ``imports_done`` to be called
    when its imports are done, before its kernels are prepared (``collector.release``),
    and ``started`` once their preparation has begun, before it serves: the next worker's
    turn at starting (``start_turn``)."""
    args = build_parser().parse_args(argv)
    if args.self_check:
        from mcpi_worker.self_check import run_self_check

        configure_logging(sys.stderr, "warning", args.log_format)
        try:
            code = run_self_check(max_inflight=args.max_inflight)
            sys.stdout.flush()
        except BrokenPipeError:  # its reader left (| true, | head -0): BROKEN_PIPE, quietly
            _drop_unwritten_stdout()
            return BROKEN_PIPE
        except OSError as exc:  # stdout full (/dev/full), closed (boot's standard_fds)
            _drop_unwritten_stdout()
            print(f"mcpi-worker: cannot write the self-check's report to stdout: {exc.strerror}", file=sys.stderr)
            return ExitCode.INTERNAL
        return code
    if os.isatty(0):
        # A person typed mcpi-worker: they would see one log line, then binary frames
        # answering whatever they type. Say what this is instead.
        print(IN_A_TERMINAL, file=sys.stderr)
        return ExitCode.USAGE

    try:
        protocol_fd = _take_stdout()
    except OSError as exc:
        print(f"mcpi-worker: cannot set up stdout for the protocol: {exc}", file=sys.stderr)
        return ExitCode.INTERNAL
    configure_logging(sys.stderr, args.log_level, args.log_format)
    if parent_death_unavailable is not None:
        log.warning("parent_death_signal_unavailable", error=parent_death_unavailable)
    if imports_done is not None:
        # Before the kernels: under MCPI_NUMPY_IMPL=fused numba loads, or compiles for
        # seconds, right here, making cyclic garbage. Held off, the collector let it pile
        # up, and its release (gc.freeze) then kept it for good: a worker compiling into
        # an empty cache grew past the memory the --workers cap counts it for
        # (tests/launch/test_fleet.py).
        imports_done()
    try:
        implementations = prepare_kernels()  # under MCPI_NUMPY_IMPL=fused: loads numba now
    except KernelConfigError as exc:
        print(f"mcpi-worker: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    log.info("kernels", implementations=implementations)
    hint = os.environ.get(EXPECTED_POINTS, "")
    # The hello's size hint, given before it (constants.EXPECTED_POINTS). Anything but
    # decimal digits, or more of them than a uint64 has, is ignored: int() of a hint past
    # 4300 digits raised ValueError, a traceback at the worker's start.
    if hint.isdecimal() and len(hint) <= MAX_HINT_DIGITS:
        NUMPY_KERNEL.expect(int(hint))
    if started is not None:
        started()
    # Ctrl-C: ignored from the start when our stdin is a pipe (boot.leave_ctrl_c_to_the_owner).

    worker = Worker(
        0,
        protocol_fd,
        max_inflight=max(args.max_inflight, args.jobs),
        jobs=args.jobs,
        implementations=kernel_implementations,
        welcome_implementations=welcome_implementations,
        expect=NUMPY_KERNEL.expect,
        spin_s=args.spin_us / 1e6,
        on_sample=_emit_stray_output if args.test_stray_output else None,
    )
    try:
        log.info("worker_started", version=__version__, max_inflight=args.max_inflight, jobs=args.jobs)
        outcome = worker.serve()
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        log.exception("worker_crashed")
        print(f"mcpi-worker: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return ExitCode.INTERNAL
    if outcome.exit_code != ExitCode.OK:
        # The one human line a person reading the coordinator's log needs.
        print(f"mcpi-worker: {outcome.reason}", file=sys.stderr, flush=True)
    return outcome.exit_code


def _drop_unwritten_stdout() -> None:
    """Point descriptor 1 at /dev/null, so that what stdout could not write is not tried
    again (and does not fail again) on the way out."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)


def _take_stdout() -> int:
    """Move the protocol to a private fd; point fd 1 (and so ``print``) at stderr.

    ``os.dup`` returns a non-inheritable fd, so child processes cannot write frames
    either; fd 1 they inherit is stderr.

    The request, response and log streams are then made blocking, which the reader
    thread and the writers assume: a coordinator may hand us non-blocking ends (its
    choice of file flags, which the pipe's end carries across exec), and a read that
    found nothing yet (EAGAIN) ended the worker as if its input had ended, a write to a
    full pipe as if its reader had gone.
    """
    sys.stdout.flush()
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    for fd in (0, protocol_fd, 2):
        try:
            os.set_blocking(fd, True)
        except OSError:  # a descriptor without such flags: nothing to change
            pass
    return protocol_fd


def _emit_stray_output(request: Sample) -> None:
    import subprocess

    print(f"stray print before request {request.id}", flush=True)
    os.write(1, b"stray raw write to fd 1\n")
    subprocess.run(
        [sys.executable, "-c", "print('stray output from a child process')"], check=False
    )
