"""The ``mcpi`` command: argument parsing, dispatch to a subcommand, exit codes.

Each subcommand's parser is built by a module under ``mcpi_coordinator/cli/`` that
exposes ``register(subparsers)``, which adds its parser and sets ``handler`` (a function
``(argparse.Namespace) -> int`` returning the exit code). Adding a subcommand is one
module and one line in ``cli.commands.COMMANDS``. Parsing imports only what parsing
needs: the command being run builds its own parser, the others are stubs, and what a
command does is imported by its handler (``--help``, ``--version``, a usage error and a
TAB completion answer in about the time the interpreter takes to start).

Usage errors are one line that names the command they belong to (``mcpi estimate:
error: ...``), suggest the nearest option or command for a typo, and exit 2. Options
are never abbreviated: ``--po`` is not ``--points``, so a typo cannot silently become
another option.

Two ends are normal for a command-line tool and get no traceback, whatever command
runs and whenever they come: Ctrl-C before a command has its own handling (while
Python imports it, say) exits 130 with one line; a reader of stdout that leaves before the
command writes (``| true``) exits 141, as a shell reports a tool that SIGPIPE ended. Both come out
of the command's own ``with``/``finally`` blocks, so every worker it started is
stopped first.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, NoReturn

from mcpi_coordinator.arguments import EnvValue, add_version
from mcpi_coordinator.cli import signals
from mcpi_coordinator.cli.commands import COMMANDS
from mcpi_coordinator.cli.exit_codes import McpiExitCode
from mcpi_worker.quoting import quoted, shortened_in

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

DESCRIPTION: Final[str] = """\
Estimate pi by Monte Carlo on a persistent pool of mcpi-worker processes, on this
machine or others (ssh, srun, kubectl exec -i): the same seed, points, chunk size and
kernel give the same count on 1 worker or 1000."""

EPILOG: Final[str] = """\
examples:
  mcpi estimate                              1e9 points on every core
  mcpi estimate -n 1e10 -s 42                repeatable: same seed, same count
  mcpi estimate --target-error 1e-4 --json   stop at a precision; one JSON object
  mcpi estimate -s 7 --part 1/2 --json > p1.json   half a run (2/2 elsewhere), then:
  mcpi combine p1.json p2.json               the whole run's count, bit for bit
  mcpi scatter -n 5000 -o quadrant.gif       the lesson's figure, animated
  mcpi bench approaches                      every way to spread the work, timed

Run 'mcpi COMMAND --help' for the options of one command.

environment (a command-line option always wins):
  MCPI_WORKER_CMD    default of --worker-cmd     MCPI_LOG_LEVEL     default of --log-level
  MCPI_REMOTE_CMD    default of --remote-cmd     MCPI_LOG_FORMAT    default of --log-format
  NO_COLOR           set: no colour or bold on the terminal

exit codes: 0 done, 1 the run failed (one line says why), 2 bad arguments (nothing
started), 130/143/129 interrupted by Ctrl-C/SIGTERM/SIGHUP (every worker stopped first),
141 the reader of stdout left before mcpi wrote to it (| true)

shell completion: eval "$(mcpi completion bash)" (or zsh, fish)
documentation: docs/ in the source (a Sphinx site: the README says how to build it;
  the distribution is mcpi-trio), and protocol.md for the wire protocol"""


class UsageParser(argparse.ArgumentParser):
    """argparse with our exit code for usage errors, one line naming the command,
    no abbreviations, and a suggestion for a mistyped option or command."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        # argparse takes "-1e9" for an option (it only knows "-5" and "-.5" as
        # numbers) and would say "expected one argument"; counts accept exponents,
        # so let the value through and have it refused as negative, which is the truth.
        self._negative_number_matcher = re.compile(r"^-(?=\.?\d)[\d_]*\.?\d*([eE][+-]?\d+)?$")

    _words: Sequence[str] = ()

    def parse_known_args(  # type: ignore[override]  # typeshed's overloads; same signature
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self.typed(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def typed(self, words: Sequence[str]) -> None:
        """Remember ``words`` as what was typed, for ``error`` to shorten in its message:
        ``parse_known_args`` does, and ``_main`` before it checks the words itself."""
        self._words = list(words)

    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: the reason is what a person (or a
        # script's log) needs, and --help is one command away. A long value argparse
        # quoted whole (an invalid choice, an unrecognized argument) is shortened
        # (``mcpi_worker.quoting``) among the words this parser was given.
        reason = shortened_in(self._suggest(message), self._words)
        self.exit(McpiExitCode.USAGE, f"{self.prog}: error: {reason} (see '{self.prog} --help')\n")

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        # argparse drops every OSError here. The help or version not delivered to stdout
        # must end the command as any other output does (``main``): a reader that left,
        # BrokenPipeError, exit 141; a full device (/dev/full, ENOSPC) or a descriptor
        # that takes nothing, one line and exit 1. Buffered, the write only failed at
        # the flush, which ``main`` hears; with PYTHONUNBUFFERED=1 it fails here, and
        # --help > /dev/full exited 0.
        out = sys.stderr if file is None else file
        try:
            out.write(message)
        except OSError:
            if out is sys.stdout:
                raise
            # stderr closed or full: the exit code still says it
        except AttributeError:  # no stream at all
            pass

    def option_strings(self) -> list[str]:
        return [option for action in self._actions for option in action.option_strings]

    def command_names(self) -> list[str]:
        return [
            name
            for action in self._actions
            if isinstance(action, argparse._SubParsersAction)
            for name in action.choices
        ]

    def _suggest(self, message: str) -> str:
        """argparse's message, reworded for the mistakes people make most: a mistyped
        command, and none at all (``mcpi``, ``mcpi bench``)."""
        missing = re.fullmatch(r"the following arguments are required: (COMMAND|BENCHMARK)", message)
        if missing is not None:
            what = "command" if missing.group(1) == "COMMAND" else "benchmark"
            return f"give a {what}: {', '.join(self.command_names())}"
        required = re.fullmatch(r"the following arguments are required: (\w+)", message)
        if required is not None:  # a positional with choices: mcpi completion's shell
            choices = [
                list(action.choices)
                for action in self._actions
                if action.dest == required.group(1) and action.choices and not action.option_strings
            ]
            if choices:
                return f"give a {required.group(1)}: {', '.join(map(str, choices[0]))}"
        choice = re.match(r"argument (COMMAND|BENCHMARK): invalid choice: '(.*?)'", message)
        if choice is not None:
            names = self.command_names()
            what = "command" if choice.group(1) == "COMMAND" else "benchmark"
            typed = choice.group(2)
            if typed.startswith("-"):
                return f"{typed} is not an option of {self.prog}; options go after the {what}"
            return f"unknown {what} {quoted(typed)}{_did_you_mean(typed, names)}; {what}s: {', '.join(names)}"
        return message

    def unrecognized(self, extras: Sequence[str]) -> NoReturn:
        first_option = next((word for word in extras if word.startswith("-")), None)
        hint = ""
        if first_option is not None:
            typed = first_option.partition("=")[0]
            hint = _did_you_mean(typed, self.option_strings())
        self.error(f"unrecognized arguments: {' '.join(extras)}{hint}")


def _did_you_mean(typed: str, candidates: Sequence[str], cutoff: float = 0.6) -> str:
    """`` (did you mean --points?)``: a name that starts with what was typed (the
    abbreviation people expect to work), or else the closest spelling (at least
    ``cutoff`` alike, difflib's ratio); or nothing."""
    import difflib  # a mistyped option's suggestion: no run needs it

    starting = [name for name in candidates if name.startswith(typed) and len(typed) > 2]
    close = starting[:3] or difflib.get_close_matches(typed, candidates, n=1, cutoff=cutoff)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def build_parser(words: Sequence[str] | None = None) -> UsageParser:
    """The ``mcpi`` parser. Given ``words`` (a command line), only the command they name
    is built in full and the others as stubs (name and summary, ``cli.commands``): all
    that parsing, completing or explaining those words needs, and none of the other
    commands' modules is imported. Without ``words``, every command in full (for the
    documentation, and tests that walk every parser)."""
    parser = UsageParser(
        prog="mcpi",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version(parser)
    subparsers = parser.add_subparsers(
        title="commands", metavar="COMMAND", required=True, parser_class=UsageParser
    )
    named = next((word for word in words if word in COMMANDS), None) if words is not None else None
    for name, (module, summary) in COMMANDS.items():
        if words is None or name == named:
            importlib.import_module(f"mcpi_coordinator.cli.{module}").register(subparsers)
        else:
            subparsers.add_parser(name, help=summary)
    return parser


def _typed_so_far() -> list[str] | None:
    """The words before the cursor when a shell's TAB started us (argcomplete's
    protocol), without the program's name; None otherwise."""
    if "_ARGCOMPLETE" not in os.environ:
        return None
    line = os.environ.get("COMP_LINE", "")
    point = os.environ.get("COMP_POINT", "")
    return line[: int(point) if point.isdigit() else len(line)].split()[1:]


def _options_before_command(parser: UsageParser, argv: Sequence[str]) -> None:
    """``mcpi --workers 2 estimate``: say where the option goes, not "invalid choice: '2'"."""
    commands = parser.command_names()
    position = next((i for i, word in enumerate(argv) if word in commands), None)
    top_level = set(parser.option_strings())
    if position is None:
        # No command: "the following arguments are required: COMMAND" hid the mistake
        # in ``mcpi --verison``. Only a close spelling of mcpi's own few options is
        # suggested (--json is no typo of --version).
        unknown = [w for w in argv if w.startswith("-") and w.partition("=")[0] not in top_level]
        if unknown:
            hint = _did_you_mean(unknown[0].partition("=")[0], sorted(top_level), cutoff=0.8)
            where = hint or f"; a command's options go after it: mcpi COMMAND {unknown[0]}"
            parser.error(f"unrecognized arguments: {' '.join(unknown)}{where}")
        return
    misplaced = [w for w in argv[:position] if w.startswith("-") and w.partition("=")[0] not in top_level]
    if misplaced:
        before = " ".join(argv[:position])
        parser.error(
            f"{misplaced[0]} is an option of the command, so it goes after it: "
            f"mcpi {argv[position]} {before}"
        )


def _check_environment(command: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Defaults from the environment get the checks argparse gives typed values."""
    for action in command._actions:
        value = getattr(args, action.dest, None)
        if isinstance(value, EnvValue) and action.choices is not None and value not in action.choices:
            command.error(
                f"environment variable {value.variable}={quoted(value)} is not one of "
                f"{', '.join(map(str, action.choices))} (it sets the default of {action.option_strings[0]})"
            )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mcpi`` command line; the exit code. Raises ``SystemExit`` for --help,
    --version and usage errors (argparse's way), nothing else."""
    if not _writes_unicode(sys.stdout) or not _writes_unicode(sys.stderr):
        from mcpi_coordinator.terminal_text import ascii_where_needed

        ascii_where_needed(sys.stdout, sys.stderr)
    try:
        try:
            # From here on SIGTERM and SIGHUP come as Ctrl-C (cli.signals), also while the
            # command line is read and the early workers start; handled() takes them over
            # from boot's holder before release, so that neither passes through its default
            # action (the end of the process, without a word) in between. A Ctrl-C, SIGTERM
            # or SIGHUP held while the command's modules loaded comes out at release.
            # handled() flushes stdout and stderr before it gives the handlers back, so that
            # no signal after it can take a result still in a buffer with the process.
            with signals.handled():
                if (boot := signals.way_in()) is not None:
                    boot.release(signals.note)
                return _main(argv)
        finally:
            # A reader that left shows here (or in handled()'s flush), as BrokenPipeError,
            # rather than in the interpreter's own flush at exit, which would print a
            # traceback. Nothing is left to write by now, short of a stop during the flush.
            if sys.stdout is not None:  # None: run in-process by a program started without fd 1
                sys.stdout.flush()
    except BrokenPipeError:
        signals.drop_unwritten(sys.stdout)  # it would fail again at exit
        return McpiExitCode.BROKEN_PIPE
    except OSError as error:
        # stdout a full disk (ENOSPC, /dev/full), a closed descriptor (EBADF: boot's
        # standard_fds keeps it failing so), a dead device (EIO): the output was not
        # delivered, and a traceback would not say so. Every worker is reaped by now (the
        # output is written after the run). Any other OSError is a bug, with its traceback.
        if not _failed_writing_stdout(error):
            raise
        signals.drop_unwritten(sys.stdout)  # it would fail again at exit
        from mcpi_coordinator.cli.text import say

        say("mcpi", f"error: cannot write the output to stdout: {error.strerror}")
        return McpiExitCode.FAILURE
    except KeyboardInterrupt:
        return _stopped()
    except RuntimeError as error:
        # Python 3.11 wraps what a descriptor's __set_name__ raises in RuntimeError, and a
        # Ctrl-C can land in one (a dataclass field's, as a module the run imports late
        # defines its classes): it came out as a traceback and exit 1.
        if not isinstance(error.__cause__, KeyboardInterrupt):
            raise
        return _stopped()


def _stopped() -> int:
    """The command was stopped by a Ctrl-C, SIGTERM or SIGHUP: its one line, and the exit
    code of the signal. SIGTERM and SIGHUP come as Ctrl-C once the command runs
    (``cli.signals``), also while it still imports what it runs: the line and the code
    name the one that came."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the exit
    from mcpi_coordinator.cli.text import say

    say("mcpi", signals.stopped_words())
    return McpiExitCode.for_signal(signals.stopped_by())


def _writes_unicode(stream: object) -> bool:
    """Whether ``stream`` is UTF-8 (or no text stream at all): the common case, told
    without importing anything."""
    encoding = getattr(stream, "encoding", None)
    return not isinstance(encoding, str) or encoding.lower().replace("-", "").replace("_", "") == "utf8"


def _failed_writing_stdout(error: OSError) -> bool:
    """Whether ``error``, escaping the command, is stdout refusing its output: a write
    to a full disk or device, over quota, too large, or broken (EPIPE, a reader that
    left, is ``BrokenPipeError``: exit 141). A failed write to a stream names no file,
    where the files mcpi opens itself do (and its own writes to them become one line
    where they happen: a checkpoint's, a plot's); EBADF is stdout's when descriptor 1
    cannot be written at all (closed when we started). Imports on the way out only."""
    import errno

    if error.filename is not None:
        return False
    if error.errno == errno.EBADF:
        import fcntl

        try:
            return fcntl.fcntl(1, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        except OSError:
            return True  # descriptor 1 is not open at all
    return error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)


def _main(argv: Sequence[str] | None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    typed = _typed_so_far()
    if typed is not None:  # a shell's TAB: answer it and exit
        from mcpi_coordinator.cli.completion import complete_if_asked

        complete_if_asked(build_parser(typed))
    if argv is None and words[:1] == ["estimate"]:  # its workers start now, beside its imports
        from mcpi_coordinator.cli import facts
        from mcpi_coordinator.launch import early

        early.start(words, choices={"--log-level": facts.LOG_LEVELS, "--log-format": facts.LOG_FORMATS})
    parser = build_parser(words)
    parser.typed(words)
    _options_before_command(parser, words)
    args, extras = parser.parse_known_args(words)
    command: UsageParser = getattr(args, "command_parser", parser)
    if extras:
        command.unrecognized(extras)
    _check_environment(command, args)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
