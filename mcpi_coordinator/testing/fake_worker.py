"""``python -m mcpi_coordinator.testing.fake_worker``: a worker process that misbehaves on request.

It speaks the real protocol on stdin/stdout (same behaviour core as the in-process
fakes, ``testing.script``) and computes the real kernels' counts, so without options it
is a drop-in, if single-threaded, ``mcpi-worker``. Options make it fail in one precise
way; point any coordinator at it as its worker command. ``--help`` lists them.

The loop is plain and synchronous, with no Trio: ``select`` on stdin with a timeout
equal to the time until the running sample is due, so pings and EOF are seen even
while a ``--slow`` sample "runs".
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import time
from collections.abc import Sequence
from typing import Final, NoReturn

from mcpi_coordinator import arguments as cli_args
from mcpi_coordinator.arguments import count, positive_count
from mcpi_coordinator.testing.script import (
    BAD_ANSWERS,
    EXIT_OK,
    Action,
    CloseStdout,
    Exit,
    FakeBehaviour,
    FakeWorkerCore,
    FloodStderr,
    Hang,
    WriteStderr,
    WriteStdout,
    flood_chunks,
)
from mcpi_worker import kernels
from mcpi_worker.protocol import PROTOCOL_VERSIONS, ErrorCode

STDIN: Final[int] = 0
STDOUT: Final[int] = 1
STDERR: Final[int] = 2
EXIT_USAGE: Final[int] = 2

HANG_POLL_S: Final[float] = 0.2
"""How often a hanging fake checks whether its parent died (then it exits, so a hung
fake never outlives the test or program that started it)."""

LEFT_CHILD_LIFETIME_S: Final[float] = 60.0

EPILOG = """\
counting: "after N" counts sample results already sent. --crash-after and --hang-after
strike when the fake is about to start a sample with N results sent, so the
coordinator has work in flight. The stream faults (--garbage, --oversize, --wrong-id,
--duplicate-id, --eof-mid-frame) replace the response that would have been result
number N+1, with N from --misbehave-after (default 0: the first one).

examples:
  python -m mcpi_coordinator.testing.fake_worker                     # a correct worker
  python -m mcpi_coordinator.testing.fake_worker --crash-after 3 --exit-code -9
  python -m mcpi_coordinator.testing.fake_worker --hang-after 0      # silent once busy
  python -m mcpi_coordinator.testing.fake_worker --garbage --misbehave-after 2
  python -m mcpi_coordinator.testing.fake_worker --slow 0.5 --stderr-flood 100
  mcpi estimate --worker-cmd "python -m mcpi_coordinator.testing.fake_worker --crash-after 5"

exit codes: 0 orderly end (stdin EOF, shutdown, or stdout closed by the reader);
2 bad arguments; 3 fatal protocol error (after one nil-id error frame); otherwise the
--exit-code asked for.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _kernel_names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in kernels.KERNELS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"{text!r}: choose from {', '.join(kernels.KERNELS)} (comma-separated)"
        )
    return names


def _numbers(text: str) -> tuple[int, ...]:
    try:
        streams = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated whole numbers") from None
    if not streams or min(streams) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated whole numbers")
    return streams


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m mcpi_coordinator.testing.fake_worker",
        description=(
            "A fake mcpi worker for testing coordinators: it speaks the mcpi protocol on "
            "stdin/stdout, gives the real kernels' counts, and misbehaves exactly as asked."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    death = parser.add_argument_group("dying and hanging")
    death.add_argument("--crash-after", type=count, metavar="N",
                       help="exit with --exit-code when starting a sample after N results")
    death.add_argument("--exit-code", type=int, default=1, metavar="K",
                       help="exit code of a crash (default 1); -S means 'killed by signal S'")
    death.add_argument("--hang-after", type=count, metavar="N",
                       help="stop reading and writing for ever (even on EOF) when starting "
                            "a sample after N results; only a signal ends it")
    death.add_argument("--silent", action="store_true",
                       help="never answer hello: hang before the handshake")
    death.add_argument("--exit-at-start", action="store_true",
                       help="exit with --exit-code at once, before reading anything")
    death.add_argument("--ignore-sigterm", action="store_true",
                       help="ignore SIGTERM, so only SIGKILL stops it")
    death.add_argument("--close-stdout-after", type=count, metavar="N",
                       help="close stdout when starting a sample after N results and live on: "
                            "stdin is still read, answers go nowhere, EOF still ends it")
    death.add_argument("--leave-child", action="store_true",
                       help="when crashing, leave a child process holding stdin, stdout "
                            "and stderr open, as a careless wrapper would")

    stream = parser.add_argument_group("breaking the protocol")
    stream.add_argument("--misbehave-after", type=count, default=0, metavar="N",
                        help="answer N samples correctly before the faults below (default 0)")
    stream.add_argument("--garbage", action="store_true",
                        help="write a line of text on stdout instead of a result, as a stray "
                             "print would")
    stream.add_argument("--oversize", action="store_true",
                        help="write a frame one byte over the 1 MiB limit")
    stream.add_argument("--wrong-id", action="store_true",
                        help="answer with a result for an id never sent")
    stream.add_argument("--duplicate-id", action="store_true",
                        help="send every result twice")
    stream.add_argument("--eof-mid-frame", action="store_true",
                        help="write half a result frame, then exit with --exit-code")
    stream.add_argument("--bad-version", action="store_true",
                        help="welcome with protocol version 99")
    stream.add_argument("--internal-errors", type=count, default=0, metavar="N",
                        help="answer the first N samples with a retryable 'internal' error")
    stream.add_argument("--ignore-cancel", action="store_true",
                        help="let a cancel stop nothing: a running sample is answered with "
                             "its result when it is due")
    stream.add_argument("--stderr-noise", action="store_true",
                        help="write bytes that are no text (not UTF-8, NUL, terminal escapes, "
                             "no newline) to stderr before every result")
    stream.add_argument("--bad-answer", choices=sorted(a for a in BAD_ANSWERS if a), default=None,
                        help="answer samples breaking an answer's rules: more inside than "
                             "points, other points, a pong, or a NaN elapsed_s")
    stream.add_argument("--claimed-elapsed-s", type=float, default=None, metavar="S",
                        help="report S as every result's elapsed_s, whatever it took (a lie "
                             "that breaks no rule)")
    stream.add_argument("--wrong-count", type=int, default=0, metavar="D",
                        help="report counts off by D (kept between 0 and the points): a "
                             "plausible, silently wrong answer")
    stream.add_argument("--wrong-count-streams", type=_numbers, default=None, metavar="LIST",
                        help="only for these streams (comma-separated; default every stream)")
    stream.add_argument("--wrong-count-times", type=count, default=None, metavar="N",
                        help="only for the first N results it would falsify (default always)")
    stream.add_argument("--error-code", default=ErrorCode.INTERNAL, metavar="CODE",
                        help="the code of --internal-errors' answers (default internal); one "
                             "not retryable refuses what the welcome admits")

    pace = parser.add_argument_group("pace and capabilities")
    pace.add_argument("--slow", type=cli_args.number("seconds", allow_zero=True), default=0.0, metavar="SECONDS",
                      help="each sample takes this long per stream it counts (pings still answered)")
    pace.add_argument("--stderr-flood", type=cli_args.number("MiB", allow_zero=True), default=0.0, metavar="MB",
                      help="write MB MiB of text to stderr before the first result")
    pace.add_argument("--kernels", type=_kernel_names, default=tuple(kernels.KERNELS),
                      metavar="LIST", help=f"kernels offered (default {','.join(kernels.KERNELS)})")
    pace.add_argument("--max-inflight", type=positive_count, default=4, metavar="N",
                      help="sample requests accepted at once; more are answered busy (default 4)")
    pace.add_argument("--jobs", type=positive_count, default=1, metavar="N",
                      help="samples computed at once (default 1)")
    pace.add_argument("--points-per-s", type=cli_args.number("points per second"), default=None,
                      metavar="RATE", help="also take points/RATE seconds per sample")
    pace.add_argument("--made-up-counts", action="store_true",
                      help="report a plausible made-up count instead of computing it "
                           "(for benchmarks of a coordinator alone; never for counts)")
    pace.add_argument("--versions", type=_numbers, default=PROTOCOL_VERSIONS, metavar="LIST",
                      help="protocol versions it speaks (default "
                           f"{','.join(map(str, PROTOCOL_VERSIONS))}; 1: before stream ranges)")
    return parser


def behaviour_from_args(args: argparse.Namespace) -> FakeBehaviour:
    return FakeBehaviour(
        crash_after=args.crash_after,
        exit_code=args.exit_code,
        hang_after=args.hang_after,
        silent=args.silent,
        exit_at_start=args.exit_at_start,
        bad_version=args.bad_version,
        error_code=args.error_code,
        ignore_sigterm=args.ignore_sigterm,
        misbehave_after=args.misbehave_after,
        garbage=args.garbage,
        oversize=args.oversize,
        wrong_id=args.wrong_id,
        duplicate_id=args.duplicate_id,
        eof_mid_frame=args.eof_mid_frame,
        internal_errors=args.internal_errors,
        claimed_elapsed_s=args.claimed_elapsed_s,
        bad_answer=args.bad_answer,
        leave_child=args.leave_child,
        close_stdout_after=args.close_stdout_after,
        ignore_cancel=args.ignore_cancel,
        stderr_noise=args.stderr_noise,
        wrong_count=args.wrong_count,
        wrong_count_streams=args.wrong_count_streams,
        wrong_count_times=args.wrong_count_times,
        slow=args.slow,
        stderr_flood_mb=args.stderr_flood,
        kernels=args.kernels,
        max_inflight=max(args.max_inflight, args.jobs),  # as mcpi-worker: jobs <= max_inflight
        versions=args.versions,
        jobs=args.jobs,
        points_per_s=args.points_per_s,
        made_up_counts=args.made_up_counts,
    )


def behaviour_to_argv(behaviour: FakeBehaviour) -> list[str]:
    """The command-line options that make the subprocess fake behave like ``behaviour``."""
    argv: list[str] = []
    for name, value in behaviour.faults.items():
        flag = "--" + {"stderr_flood_mb": "stderr-flood"}.get(name, name.replace("_", "-"))
        if value is True:
            argv.append(flag)
        elif isinstance(value, tuple):
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def fake_worker_command(
    behaviour: FakeBehaviour = FakeBehaviour(), python: str = sys.executable
) -> list[str]:
    """The argv that starts a subprocess fake behaving like ``behaviour``; use it as a
    coordinator's worker command (``WorkerPool(command=...)``, ``mcpi --worker-cmd``)."""
    return [python, "-m", __spec__.name if __spec__ else "mcpi_coordinator.testing.fake_worker",
            *behaviour_to_argv(behaviour)]


def serve(behaviour: FakeBehaviour, parent: int) -> int:
    """Run the fake until it exits; return its exit code (or die by a signal).

    ``parent`` is the pid of the process that started us, read as early as possible.
    """
    core = FakeWorkerCore(behaviour, pid=os.getpid())
    code = _perform(core.start(), parent)
    eof = False
    while code is None:
        now = time.monotonic()
        deadline = core.deadline
        if deadline is not None and deadline <= now:
            code = _perform(core.advance(now), parent)
            continue
        timeout = None if deadline is None else deadline - now
        # After end of input stdin stays readable for ever: only the samples still
        # running are left to end, so wait for them, not for stdin.
        readable, _, _ = select.select([] if eof else [STDIN], [], [], timeout if not eof else (timeout or HANG_POLL_S))
        now = time.monotonic()
        if not readable:
            if eof and deadline is None and os.getppid() != parent:
                return EXIT_OK  # nothing will ever end: whoever started us is gone
            actions = core.advance(now)
        elif data := os.read(STDIN, 1 << 16):
            actions = core.receive_data(data, now)
        else:
            eof = True
            actions = core.receive_eof(now)
        code = _perform(actions, parent)
    return code


def _perform(actions: list[Action], parent: int) -> int | None:
    """Do the actions; the exit code if one ends the process, else None."""
    try:
        for action in actions:
            if isinstance(action, WriteStdout):
                _write_all(STDOUT, action.data)
            elif isinstance(action, WriteStderr):
                _write_all(STDERR, action.data)
            elif isinstance(action, FloodStderr):
                for chunk in flood_chunks(action.nbytes):
                    _write_all(STDERR, chunk)
            elif isinstance(action, Exit):
                return action.code
            elif isinstance(action, Hang):
                _hang(parent)
            elif isinstance(action, CloseStdout):
                _close_stdout()
    except BrokenPipeError:
        return EXIT_OK  # nobody reads our output any more: end quietly, like mcpi-worker
    return None


def _close_stdout() -> None:
    """Close our end of the stdout pipe (the reader sees EOF), keeping descriptor 1 open on
    /dev/null: the core writes nothing more on it, but a number left closed would be
    the next file's, and Python's own stdout at exit must not meet a closed one."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, STDOUT)
    os.close(devnull)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _hang(parent: int) -> NoReturn:
    while os.getppid() == parent:
        time.sleep(HANG_POLL_S)
    os._exit(EXIT_OK)  # re-parented: whoever would have killed us is gone


def _leave_child() -> None:
    """Fork a child that keeps our stdin, stdout and stderr open, in our process group,
    and sleeps until it is killed: a grandchild of the coordinator's, holding its pipes.
    It gives up after ``LEFT_CHILD_LIFETIME_S``, so a coordinator that fails to kill it
    leaves it for a minute, not for ever."""
    child = os.fork()
    if child == 0:
        time.sleep(LEFT_CHILD_LIFETIME_S)
        os._exit(0)
    _write_all(STDERR, f"left a child {child}\n".encode())


def _exit(code: int) -> NoReturn:
    if code < 0:
        signum = -code
        if signum not in (signal.SIGKILL, signal.SIGSTOP):  # those have no handler to reset
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        time.sleep(1)  # the signal is delivered before this returns, unless it is ignorable
        code = 128 + signum
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parent = os.getppid()  # first thing: a hang ends when this process is gone
    args = build_parser().parse_args(argv)
    behaviour = behaviour_from_args(args)
    if not os.isatty(STDIN):
        # Like mcpi-worker: Ctrl-C in the coordinator's terminal is the coordinator's to handle.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if behaviour.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    code = serve(behaviour, parent)
    if behaviour.leave_child and behaviour.crash_after is not None and code == behaviour.exit_code:
        _leave_child()
    _exit(code)


if __name__ == "__main__":
    main()
