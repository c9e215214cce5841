"""Workers on other machines: host specs, ssh command lines, and a launcher per pool slot.

``mcpi-worker`` needs nothing but stdin and stdout, so anything that connects stdio to
a process elsewhere carries it: ``ssh``, ``srun``, ``kubectl exec -i``, ``docker exec
-i``. This module turns what the user typed (``--host``, ``--hosts-file``,
``--ssh-option``, ``--remote-cmd``, ``--worker-cmd`` with ``{i}``) into one argument
vector per pool slot, and into the pool's ``Launcher`` (slot index → started worker).

Security: nothing here goes through a local shell. Every command is an argument
vector handed to ``exec``. Host specs are validated strictly (no shell metacharacters,
no whitespace, nothing starting with ``-`` that ssh would read as an option), and the
``--`` after the destination ends ssh's own option parsing. ssh itself joins the
remote command into one string that the *remote* login shell parses, so the remote
command is quoted with ``shlex.join``: each word arrives as exactly that word, and no
``;``, ``$(...)`` or quote in it can run anything else on the remote side either.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import shlex
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Protocol

import trio

from mcpi_coordinator import files
from mcpi_coordinator.launch.capacity import default_max_starting
from mcpi_coordinator.launch.redact import redacted
from mcpi_coordinator.launch.transport import Launcher, StartLimiter, WorkerProcess
from mcpi_worker.quoting import quoted

SPEC_SYNTAX: Final = "[user@]host[:port][*N]"
MAX_WORKERS_PER_HOST: Final = 1024
"""A typo like ``*1000000`` should be an error, not a million ssh connections."""

DEFAULT_REMOTE_COMMAND: Final = "mcpi-worker"

MAX_SSH_STARTS_PER_HOST: Final = 4
"""Workers started at once on one ssh host (ssh handshake to welcome). sshd's default
``MaxStartups 10:30:100`` starts refusing unauthenticated connections beyond 10 at
once: ``--host 127.0.0.1*64`` all at once retired 37 of the 64 workers
(``kex_exchange_identification: Connection closed by remote host``). Four stays
clear of that with room for other clients, and keeps the host's CPU for the workers
starting, as ``launch.capacity.default_max_starting`` does here."""

MAX_SSH_STARTS: Final = 32
"""ssh clients starting at once over all hosts (ssh handshake to welcome), beside each
host's ``MAX_SSH_STARTS_PER_HOST``. Each client starting does a key exchange and an
authentication on this machine's CPU: 300 hosts started 300 ssh processes within a
second. 32 is pdsh's default fanout (``pdsh -f``) for the same job; a host whose turn
has not come waits as ``queued``, its start-up timeout not yet running."""

WORKER_INDEX_PLACEHOLDER: Final = "{i}"

# ssh reads these first, so the user cannot switch them off: without BatchMode a
# password or host-key prompt would wait forever on a terminal nobody watches.
_FORCED_SSH_OPTIONS: Final = ("BatchMode=yes",)

# ssh keeps the *first* value it sees for an option, so these go after the user's
# --ssh-option values and act as overridable defaults: give up on a host that does not
# answer, and notice a host that dies mid-run instead of waiting on a silent TCP link.
_DEFAULT_SSH_OPTIONS: Final = (
    "ConnectTimeout=10",
    "ServerAliveInterval=5",
    "ServerAliveCountMax=3",
)

_NAME_CHARS: Final = re.compile(r"[A-Za-z0-9._-]+")
_SPEC_CHARS: Final = re.compile(r"[A-Za-z0-9._@:*\[\]-]+")
_DIGITS: Final = re.compile(r"[0-9]+")
_SSH_OPTION_KEY: Final = re.compile(r"[A-Za-z][A-Za-z0-9]*")


class RemoteConfigError(ValueError):
    """Bad host spec, hosts file, ssh option or worker command: one line for the user."""


@dataclass(frozen=True)
class HostSpec:
    """One ``[user@]host[:port][*N]``: where to run ``workers`` workers over ssh."""

    host: str
    user: str | None = None
    port: int | None = None
    workers: int = 1

    @property
    def destination(self) -> str:
        """What ssh takes as its destination argument."""
        return self.host if self.user is None else f"{self.user}@{self.host}"

    @property
    def name(self) -> str:
        """How the host is named in warnings: the spec without the worker count."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = host if self.user is None else f"{self.user}@{host}"
        return text if self.port is None else f"{text}:{self.port}"

    def __str__(self) -> str:
        return self.name if self.workers == 1 else f"{self.name}*{self.workers}"


def parse_host_spec(text: str) -> HostSpec:
    """Parse ``[user@]host[:port][*N]``; IPv6 addresses go in brackets: ``[::1]:2222``.

    Raises ``RemoteConfigError`` naming the spec and what is wrong with it.
    """

    def invalid(reason: str) -> RemoteConfigError:
        return RemoteConfigError(f"invalid host spec {quoted(text)}: {reason} (expected {SPEC_SYNTAX})")

    if not text:
        raise invalid("it is empty")
    for char in text:
        if char.isspace():
            raise invalid("whitespace is not allowed")
        if not _SPEC_CHARS.fullmatch(char):
            raise invalid(
                f"character {char!r} is not allowed; use letters, digits, '.', '-', '_' "
                "and the separators '@', ':', '*'"
            )

    rest, star, count_text = text.partition("*")
    workers = 1
    if star:
        workers = _bounded_int(count_text, "the worker count N", 1, MAX_WORKERS_PER_HOST, invalid)

    user: str | None = None
    if "@" in rest:
        user, _, rest = rest.partition("@")
        if "@" in rest:
            raise invalid("more than one '@'")
        _check_name(user, "user name", invalid)

    port: int | None = None
    if rest.startswith("["):
        address, bracket, after = rest[1:].partition("]")
        if not bracket:
            raise invalid("'[' without a closing ']'")
        try:
            host = str(ipaddress.IPv6Address(address))
        except ValueError:
            raise invalid(f"{quoted(address)} in brackets is not an IPv6 address") from None
        if after:
            if not after.startswith(":"):
                raise invalid("only ':port' may follow ']'")
            port = _bounded_int(after[1:], "the port", 1, 65535, invalid)
    else:
        host, colon, port_text = rest.partition(":")
        if colon:
            if ":" in port_text:
                raise invalid("more than one ':'; write IPv6 addresses in brackets: [::1]:22")
            port = _bounded_int(port_text, "the port", 1, 65535, invalid)
        _check_name(host, "host name", invalid)
    return HostSpec(host=host, user=user, port=port, workers=workers)


def host_spec_arg(text: str) -> HostSpec:
    """argparse ``type=`` for ``--host``."""
    try:
        return parse_host_spec(text)
    except RemoteConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


MAX_HOSTS_FILE_BYTES: Final[int] = 2**20
"""The most a hosts file may hold (thousands of hosts, with comments): read no further,
so ``--hosts-file /dev/zero`` is one line rather than reading until ``MemoryError``."""


def read_hosts_file(path: str | Path) -> list[HostSpec]:
    """One spec a line; ``#`` starts a comment; blank lines are skipped. A file that is
    another user's or that others may write is refused (``files.owner_refusal``).

    Errors name ``file:line``.
    """
    try:
        text = files.read_limited(path, MAX_HOSTS_FILE_BYTES, own=True).decode("utf-8")
    except files.TooLarge as error:
        raise RemoteConfigError(f"hosts file {quoted(path)} is {error}: not a list of hosts") from None
    except files.NotOwn as error:
        raise RemoteConfigError(
            f"hosts file {quoted(path)} {error}: whoever can write it chooses the machines that give "
            "the counts; use a file only you can write"
        ) from None
    except OSError as error:
        raise RemoteConfigError(
            f"cannot read hosts file {quoted(path)}: {error.strerror or error}"
        ) from None
    except UnicodeDecodeError:
        raise RemoteConfigError(f"hosts file {quoted(path)} is not UTF-8 text") from None
    specs = []
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        try:
            specs.append(parse_host_spec(content))
        except RemoteConfigError as error:
            raise RemoteConfigError(f"{path}:{number}: {error}") from None
    return specs


def parse_ssh_option(text: str) -> str:
    """Validate one ``--ssh-option KEY=VALUE``; returns it as ssh's ``-o`` takes it."""
    key, equals, value = text.partition("=")
    if not equals or not _SSH_OPTION_KEY.fullmatch(key) or not value.strip():
        raise RemoteConfigError(
            f"invalid ssh option {quoted(text)}: expected KEY=VALUE, e.g. IdentityFile=~/.ssh/id_ed25519"
        )
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise RemoteConfigError(f"invalid ssh option {quoted(text)}: control characters are not allowed")
    return f"{key}={value}"


def ssh_option_arg(text: str) -> str:
    """argparse ``type=`` for ``--ssh-option``."""
    try:
        return parse_ssh_option(text)
    except RemoteConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def split_command(text: str, what: str) -> list[str]:
    """Shell-style split of a command given on the command line, with one clear error."""
    try:
        argv = shlex.split(text)
    except ValueError as error:
        raise RemoteConfigError(f"invalid {what} {quoted(redacted(text))}: {error}") from None
    if not argv:
        raise RemoteConfigError(f"invalid {what}: it is empty")
    return argv


def ssh_command(
    spec: HostSpec,
    remote_command: Sequence[str],
    ssh_options: Sequence[str] = (),
    ssh: str = "ssh",
) -> list[str]:
    """``ssh -T -o BatchMode=yes [-p port] [-o K=V ...] [user@]host -- 'REMOTE CMD'``.

    ``-T``: no pseudo-terminal, so the frames pass through byte for byte. The remote
    command travels as one ``shlex.join``-quoted string because ssh would join separate
    words with spaces and let the remote shell re-split (and interpret) them.
    """
    argv = [ssh, "-T"]
    for option in _FORCED_SSH_OPTIONS:
        argv += ["-o", option]
    if spec.port is not None:
        argv += ["-p", str(spec.port)]
    for option in (*ssh_options, *_DEFAULT_SSH_OPTIONS):
        argv += ["-o", option]
    return argv + [spec.destination, "--", shlex.join(remote_command)]


def substitute_index(template: Sequence[str], index: int) -> list[str]:
    """Replace ``{i}`` with the worker's index in every word of ``template``.

    Plain replacement rather than ``str.format``: other braces (a kubectl jsonpath, a
    shell ``${VAR}`` inside ``sh -c``) pass through untouched. It happens after the
    split, so the index can never create or merge words.
    """
    return [word.replace(WORKER_INDEX_PLACEHOLDER, str(index)) for word in template]


@dataclass(frozen=True)
class WorkerSlot:
    """What runs in one pool slot: its command, the host it reaches (None: here), and
    how many samples its worker computes at once (``mcpi-worker --jobs``)."""

    command: tuple[str, ...]
    host: HostSpec | None = None
    jobs: int = 1


def plan_slots(
    local_workers: int,
    local_command: Callable[[int], Sequence[str]],
    hosts: Iterable[HostSpec] = (),
    ssh_options: Sequence[str] = (),
    remote_command: Sequence[str] = (DEFAULT_REMOTE_COMMAND,),
    ssh: str = "ssh",
) -> list[WorkerSlot]:
    """Slots in pool order: the local workers first, then one per host.

    ``local_command(index)`` is the command of local slot ``index`` (``--worker-cmd``
    with ``{i}`` substituted, see ``substitute_index``). A host's N workers are one ssh
    connection running ``REMOTE CMD --jobs N`` (nothing is added for N = 1): one
    handshake instead of N, so sshd's ``MaxStartups`` and ``MaxSessions`` never come
    into it, and one process on the host that computes N samples at once. Specs that
    name one destination (``--host a*2 --host a*3``) are one connection of their sum.
    Raises ``RemoteConfigError`` when that sum is more than one worker runs.
    """
    slots = [WorkerSlot(tuple(local_command(index))) for index in range(local_workers)]
    for spec in one_per_destination(hosts):
        command = list(remote_command)
        if spec.workers > 1:
            command += ["--jobs", str(spec.workers)]
        slots.append(WorkerSlot(tuple(ssh_command(spec, command, ssh_options, ssh)), spec, spec.workers))
    return slots


def one_per_destination(hosts: Iterable[HostSpec]) -> list[HostSpec]:
    """``hosts`` with the specs of one destination (user, host and port) merged into
    the first of them, their worker counts added up."""
    merged: dict[tuple[str | None, str, int | None], HostSpec] = {}
    for spec in hosts:
        key = (spec.user, spec.host, spec.port)
        first = merged.get(key)
        workers = spec.workers if first is None else first.workers + spec.workers
        if workers > MAX_WORKERS_PER_HOST:
            raise RemoteConfigError(
                f"host {spec.name} is given {workers} workers in all; one worker there "
                f"computes at most {MAX_WORKERS_PER_HOST} at once"
            )
        merged[key] = replace(first or spec, workers=workers)
    return list(merged.values())


Spawn = Callable[[Sequence[str]], Awaitable[WorkerProcess]]
"""Starts one worker process from an argument vector (the pool's own spawner)."""


def slot_launcher(slots: Sequence[WorkerSlot], spawn: Spawn) -> Launcher:
    """The pool's ``Launcher``: slot ``index`` always starts ``slots[index].command``,
    so a replacement for a worker on host A goes to host A again."""
    commands = [slot.command for slot in slots]

    async def launch(index: int) -> WorkerProcess:
        return await spawn(commands[index])

    return launch


def starting_limits(
    slots: Sequence[WorkerSlot], local: int | None = None, *, ssh_total: int = MAX_SSH_STARTS
) -> list[StartLimiter]:
    """One limiter per slot for ``WorkerPool(starting_limits=...)``: the local slots
    share one of ``local`` (default ``default_max_starting()``); the slots of each ssh
    host (address and port: what one sshd serves) one that takes a turn from the
    host's ``MAX_SSH_STARTS_PER_HOST`` and then one from the ``ssh_total`` shared by
    every host."""
    here = trio.CapacityLimiter(local or default_max_starting())
    every_host = trio.CapacityLimiter(ssh_total)
    per_host: dict[tuple[str, int | None], HostStarts] = {}
    limits: list[StartLimiter] = []
    for slot in slots:
        if slot.host is None:
            limits.append(here)
        else:
            key = (slot.host.host, slot.host.port)
            if key not in per_host:
                per_host[key] = HostStarts(trio.CapacityLimiter(MAX_SSH_STARTS_PER_HOST), every_host)
            limits.append(per_host[key])
    return limits


class HostStarts:
    """The starting bound of one ssh host's slots: a turn from the host's own limiter,
    then one from the limiter every host shares (a ``StartLimiter``).

    The host's first: a slot waiting for the shared turn then holds its host's, which
    only other slots of that host want, and never the shared one while its host is busy.
    """

    def __init__(self, host: trio.CapacityLimiter, every_host: trio.CapacityLimiter) -> None:
        self.host = host
        self.every_host = every_host

    @property
    def total_tokens(self) -> int | float:
        return min(self.host.total_tokens, self.every_host.total_tokens)

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        await self.host.acquire_on_behalf_of(borrower)
        try:
            await self.every_host.acquire_on_behalf_of(borrower)
        except BaseException:  # cancelled while waiting: hold nothing
            self.host.release_on_behalf_of(borrower)
            raise

    def release_on_behalf_of(self, borrower: object) -> None:
        self.every_host.release_on_behalf_of(borrower)
        self.host.release_on_behalf_of(borrower)


def concurrent_starts(limits: Sequence[StartLimiter]) -> int:
    """How many workers ``limits`` let start at once, in all (what the open-file
    budget reserves for starting workers)."""
    plain = {id(limit): limit for limit in limits if not isinstance(limit, HostStarts)}
    hosts = [limit for limit in limits if isinstance(limit, HostStarts)]
    own = {id(limit.host): limit.host for limit in hosts}
    shared = {id(limit.every_host): limit.every_host for limit in hosts}
    ssh = min(_tokens(own.values()), _tokens(shared.values()))
    return _tokens(plain.values()) + ssh


def _tokens(limits: Iterable[StartLimiter]) -> int:
    return sum(int(limit.total_tokens) for limit in limits)


def slots_from_args(
    args: argparse.Namespace, local_command: Callable[[int], Sequence[str]]
) -> list[WorkerSlot]:
    """Every slot the options of ``add_arguments`` (plus ``--workers``) ask for.

    Raises ``RemoteConfigError`` for an unreadable or bad hosts file, a bad remote
    command, or no worker at all.
    """
    hosts = list(args.host)
    from_file: list[HostSpec] = []
    if args.hosts_file is not None:
        from_file = read_hosts_file(args.hosts_file)
        hosts += from_file
    remote_command = split_command(args.remote_cmd, getattr(args.remote_cmd, "variable", "--remote-cmd"))
    slots = plan_slots(args.workers, local_command, hosts, args.ssh_option, remote_command)
    if not slots:
        if args.hosts_file is not None and not from_file:
            raise RemoteConfigError(
                f"hosts file {quoted(args.hosts_file)} lists no hosts (only blank lines and "
                f"comments) and --workers is {args.workers}: no worker to run"
            )
        raise RemoteConfigError(
            f"--workers {args.workers} and no hosts leave no worker to run: use "
            "--workers 1 or more, or give --host / --hosts-file"
        )
    return slots


class HostFigures(Protocol):
    """What ``host_rows`` reads of one worker slot: ``pool.worker_pool.WorkerStats`` has
    it. Written here, not imported, because the pool imports the launchers, not the
    other way round (the layers in pyproject.toml)."""

    @property
    def host(self) -> str | None: ...
    @property
    def jobs(self) -> int: ...
    @property
    def chunks(self) -> int: ...
    @property
    def points(self) -> int: ...


def host_rows(workers: Sequence[HostFigures], elapsed_s: float) -> list[dict[str, Any]]:
    """Per-host figures for ``--json``: worker processes, the samples they compute at
    once (``jobs``), chunks, points and points/s per host.

    The host is the name each worker gave in its welcome (the machine's own host
    name), so slots that never completed a handshake are not counted anywhere.
    Points per second are over the whole run's wall time: what the host contributed.
    """
    rows: dict[str, dict[str, Any]] = {}
    for worker in workers:
        if worker.host is None:
            continue
        row = rows.setdefault(
            worker.host, {"name": worker.host, "workers": 0, "jobs": 0, "chunks": 0, "points": 0}
        )
        row["workers"] += 1
        row["jobs"] += worker.jobs
        row["chunks"] += worker.chunks
        row["points"] += worker.points
    for row in rows.values():
        row["points_per_s"] = row["points"] / elapsed_s if elapsed_s > 0 else 0.0
    return list(rows.values())


LONGEST_NAME: Final[int] = 253
"""The longest host name (a DNS name has at most 253 characters) or user name (Linux's
useradd allows 32) a host spec may hold: a longer one was tried by ssh three times, and
every log line and error of the run quoted it whole."""


def _check_name(
    name: str, what: str, invalid: Callable[[str], RemoteConfigError]
) -> None:
    if not name:
        raise invalid(f"the {what} is empty")
    if name.startswith("-"):
        raise invalid(f"the {what} starts with '-', which ssh would read as an option")
    if not _NAME_CHARS.fullmatch(name):
        raise invalid(f"the {what} {quoted(name)} may contain only letters, digits, '.', '-' and '_'")
    if len(name) > LONGEST_NAME:
        raise invalid(f"the {what} is {len(name):,} characters long; the most is {LONGEST_NAME}")


def _bounded_int(
    text: str, what: str, low: int, high: int, invalid: Callable[[str], RemoteConfigError]
) -> int:
    if not _DIGITS.fullmatch(text):
        raise invalid(f"{what} must be a whole number from {low} to {high}, not {quoted(text)}")
    # More digits than the bound has is out of range: int() of over 4,300 digits raises
    # ValueError, which argparse reported as "invalid _host_spec value".
    digits = text.lstrip("0") or "0"
    value = int(digits) if len(digits) <= len(str(high)) else high + 1
    if not low <= value <= high:
        raise invalid(f"{what} must be from {low} to {high}, not {quoted(digits, quote=False)}")
    return value
