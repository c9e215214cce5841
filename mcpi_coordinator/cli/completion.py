"""``mcpi completion SHELL``: print the shell code that completes ``mcpi``'s commands,
options and choices as you type.

The completions come from the very parser that parses the command line (argcomplete
runs it when the shell asks), so they cannot fall out of step with the options.
"""

from __future__ import annotations

import argparse
from typing import Any, Final

from mcpi_coordinator import arguments as cli_args
from mcpi_coordinator.cli import commands
from mcpi_coordinator.cli.exit_codes import McpiExitCode

SHELLS: Final[tuple[str, ...]] = ("bash", "zsh", "fish")

EPILOG: Final[str] = """\
set it up once:
  bash   echo 'eval "$(mcpi completion bash)"' >> ~/.bashrc
  zsh    echo 'eval "$(mcpi completion zsh)"' >> ~/.zshrc
  fish   mcpi completion fish > ~/.config/fish/completions/mcpi.fish"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "completion",
        help=commands.summary("completion"),
        description="Print the shell code that makes TAB complete mcpi's commands, options "
        "and their choices.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("shell", choices=SHELLS, help="the shell to print code for")
    cli_args.add_version(parser)
    parser.set_defaults(handler=run, command_parser=parser)


def run(args: argparse.Namespace) -> int:
    from argcomplete.shell_integration import shellcode  # here: parsing other commands never needs it

    print(shellcode(["mcpi"], shell=args.shell), end="")
    return McpiExitCode.OK


def complete_if_asked(parser: argparse.ArgumentParser) -> None:
    """Answer the shell and exit, when the shell's completion code started us."""
    import argcomplete

    argcomplete.autocomplete(parser)
