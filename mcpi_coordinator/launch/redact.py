"""Worker command lines as mcpi shows them: with the values of secrets left out.

mcpi names a worker by its command line wherever it says something about it (a worker
that failed, one slow to start), because that is how the user recognises it. A
``--worker-cmd`` may carry a secret (``--token``, ``PGPASSWORD=`` for an ``env``
wrapper, ``https://user:pass@host``), and an error line ends up in terminal
scrollback, CI logs and bug reports. So a command is shown whole except the values
whose *name* says they are secret:

- ``--NAME VALUE``, ``--NAME=VALUE``, ``-NAME VALUE`` and ``NAME=VALUE`` where NAME
  contains token, password, passwd, passphrase, secret, api-key, access-key,
  private-key or credential (any case, ``-`` or ``_``): the VALUE becomes ``REDACTED``;
- the password of a URL's ``user:password@``;
- the same inside one argument holding a whole command (ssh's remote command).

Chosen over showing only the program's name: the rest of the line (the interpreter,
the options, the host) is what tells two failing workers apart, and it is rarely
secret. What this cannot catch is a secret with no such name (a bare positional
argument): the docs say to pass secrets in the environment or a file instead. A
command line is no place for a secret anyway: every local user can read it in
``/proc/PID/cmdline`` (``ps``) while the worker runs; this only keeps mcpi's own
messages from repeating it.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from typing import Final

__all__ = ["HIDDEN", "redacted", "shown_command"]

HIDDEN: Final[str] = "REDACTED"

_NAME: Final[str] = (
    r"[A-Za-z0-9_.-]*(?:token|passw(?:or)?d|passphrase|secret|api[_-]?key|access[_-]?key"
    r"|private[_-]?key|credential)[A-Za-z0-9_.-]*"
)
_VALUE: Final[str] = r"""(?:'[^']*'|"[^"]*"|[^\s'"]+)"""
_START: Final[str] = r"""(?<![^\s'"])"""  # at the start of the text or of a word

_FLAG: Final[re.Pattern[str]] = re.compile(rf"-{{1,2}}{_NAME}", re.IGNORECASE)
_ASSIGNED: Final[re.Pattern[str]] = re.compile(rf"({_START}-{{0,2}}{_NAME}=){_VALUE}", re.IGNORECASE)
_FLAG_THEN_VALUE: Final[re.Pattern[str]] = re.compile(rf"({_START}-{{1,2}}{_NAME}\s+){_VALUE}", re.IGNORECASE)
_URL_PASSWORD: Final[re.Pattern[str]] = re.compile(r"(://[^/\s:@]*:)[^/\s@]+(@)")


def redacted(text: str) -> str:
    """``text`` (an argument, or a whole command line) with secret values as ``REDACTED``."""
    text = _ASSIGNED.sub(rf"\g<1>{HIDDEN}", text)
    text = _FLAG_THEN_VALUE.sub(rf"\g<1>{HIDDEN}", text)
    return _URL_PASSWORD.sub(rf"\g<1>{HIDDEN}\g<2>", text)


def shown_command(argv: Sequence[str]) -> str:
    """``argv`` as one shell-quoted line, secret values as ``REDACTED`` (see the module)."""
    shown = []
    hide_next = False
    for word in argv:
        shown.append(HIDDEN if hide_next else redacted(word))
        hide_next = bool(_FLAG.fullmatch(word))
    return shlex.join(shown)
