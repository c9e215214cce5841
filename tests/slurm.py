"""A real single-node Slurm cluster on 127.0.0.1 for the Slurm tests.

``SlurmCluster`` runs Debian's ``munged``, ``slurmctld`` and ``slurmd`` as root in a
private temporary directory (its own munge key and socket, config, state, spool and
logs), the way ``tests/sshd.py`` runs a real sshd. The tests reach it exactly as a
user on a login node does: ``SLURM_CONF`` in the environment, then ``srun``,
``salloc``, ``sbatch``, ``squeue``. The facts and pitfalls behind every choice here
(the [Pn] marks) were measured on this kind of machine: ``../shared/slurm-notes.md``.

Only a machine without the packages (or without root, which ``slurmd`` needs) is a
reason to skip, and only outside CI: under ``CI=true`` a missing cluster fails the
tests, because ``.ci/run`` installs the packages and a skip there would hide that it
stopped doing so. Once the binaries are there, a cluster that does not come up is an
error whose message carries the daemons' log tails.

Slurm's CPU counts are bookkeeping only here (no cgroups, ``task/none`` [P8]): the
node offers as many CPUs as ``slurmd -C`` sees, and jobs beyond them are refused or
queued, which is what the concurrency tests rely on.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

PROGRAMS = (
    "munged", "munge", "unmunge", "slurmctld", "slurmd", "slurmstepd",
    "srun", "salloc", "sbatch", "sinfo", "squeue", "scancel", "scontrol",
)
"""What the cluster and the tests run; Debian puts the daemons in /usr/sbin, which a
non-login root shell may not have on PATH."""

PACKAGES = "slurmctld slurmd slurm-client munge"

START_TIMEOUT_S = 30.0
"""Per daemon. They come up in well under a second (0.5-0.85 s under a load of 5);
this is only a bound for a machine that is badly overloaded."""

POLL_S = 0.1
COMMAND_TIMEOUT_S = 30.0
"""Any one Slurm client command. A client that cannot reach its daemon waits
``MessageTimeout`` (10 s) per try [P12], so a hang shows as a timeout, not forever."""

DRAIN_TIMEOUT_S = 15.0
"""``scancel`` to an empty queue: ``KillWait=5`` plus slack [teardown step 1]."""

TERM_GRACE_S = 10.0
"""SIGTERM to SIGKILL for the daemons; each takes ~2 s (slurmctld saves state) [P10]."""

CLIENT_GRACE_S = 3.0
"""SIGTERM to SIGKILL for leftover ``srun``s: one once survived SIGTERM [P11]."""

DIR_PREFIX = "mcpi-slurm-"
OWNER_FILE = "owner.pid"
"""The pid of the process that started the cluster, so that a later run can tell a
cluster abandoned by a SIGKILLed pytest from one that another session still uses."""

DEFAULT_PORTS = (6817, 6818)
CLIENT_PROGRAMS = frozenset({"srun", "salloc", "sbatch", "sattach"})
LOG_NOISE = ("pmix", "MPI: Cannot create context")
"""Harmless lines on every start (libpmix is not installed) [P7]."""


class SlurmError(RuntimeError):
    """The cluster could not be brought up or a client command failed."""


# -- finding Slurm -----------------------------------------------------------------


def find_slurm() -> dict[str, str] | None:
    """The absolute path of every program in ``PROGRAMS``, or None if one is missing."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])
    found = {name: shutil.which(name, path=search) for name in PROGRAMS}
    if any(path is None for path in found.values()):
        return None
    return {name: str(path) for name, path in found.items()}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_slurm() -> dict[str, str]:
    """Slurm's programs, or a skip (a failure under ``CI=true``) that says why not."""
    programs = find_slurm()
    if programs is not None and os.geteuid() == 0:
        return programs
    if programs is None:
        reason = (
            f"Slurm and munge ({PACKAGES}) are not installed, so the tests against a real "
            "Slurm cluster cannot run here; .ci/run installs them when it runs as root"
        )
    else:
        reason = "the Slurm tests run slurmd, which needs root; this process is not root"
    if in_ci():
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    print(f"\nSKIPPED: {reason}", file=sys.stderr)
    pytest.skip(reason)


def node_name() -> str:
    """``hostname -s``: what slurmd calls this node (and what ``--nodelist`` names)."""
    return socket.gethostname().split(".")[0]


def worker_path() -> str:
    """This venv's ``mcpi-worker``, absolute: a Slurm task does not activate the venv."""
    return str(Path(sys.executable).parent / "mcpi-worker")


# -- the process table -------------------------------------------------------------


def listening_ports() -> set[int]:
    """Local TCP ports in the LISTEN state (``0A``), IPv4 and IPv6 [P12]."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def free_ports() -> tuple[int, int]:
    """Two distinct ports the kernel considers free (both held while it picks)."""
    with socket.socket() as first, socket.socket() as second:
        first.bind(("127.0.0.1", 0))
        second.bind(("127.0.0.1", 0))
        return int(first.getsockname()[1]), int(second.getsockname()[1])


def processes_with_environment(name: str, value: str) -> list[psutil.Process]:
    """Live processes (zombies excluded) whose environment has ``name=value``."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get(name) == value:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _signal(processes: Iterable[psutil.Process], signum: signal.Signals) -> None:
    for process in processes:
        try:
            process.send_signal(signum)
        except psutil.NoSuchProcess:
            pass


def _descendants(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"  ({path.name}: none)"
    kept = [line for line in text.splitlines() if not any(noise in line for noise in LOG_NOISE)]
    return "\n".join(f"  {line}" for line in kept[-lines:]) or f"  ({path.name}: empty)"


# -- the cluster -------------------------------------------------------------------


@dataclass(frozen=True)
class Daemon:
    name: str
    pid_file: Path
    log: Path


def daemons_in(slurm_dir: Path) -> tuple[Daemon, ...]:
    """The three daemons of the cluster in ``slurm_dir``, in start order."""
    return (
        Daemon("munged", slurm_dir / "munge" / "munged.pid", slurm_dir / "munge" / "munged.log"),
        Daemon("slurmctld", slurm_dir / "run" / "slurmctld.pid", slurm_dir / "log" / "slurmctld.log"),
        Daemon("slurmd", slurm_dir / "run" / "slurmd.pid", slurm_dir / "log" / "slurmd.log"),
    )


class SlurmCluster:
    """One munged + slurmctld + slurmd on this machine; ``start()`` then ``stop()``.

    Everything lives under ``self.dir``, which ``stop()`` deletes: keep nothing else
    there. ``env()`` is the environment for a Slurm client (or an ``mcpi`` that runs
    ``srun``) talking to this cluster and no other.
    """

    def __init__(
        self, programs: Mapping[str, str] | None = None, *, parent: Path | None = None,
        ports: tuple[int, int] = DEFAULT_PORTS,
    ) -> None:
        self.programs = dict(programs or require_slurm())
        # /tmp, not pytest's deep tmp paths: munge's and slurmstepd's unix sockets
        # live in here, and a socket path has room for only 107 bytes.
        base = parent or (Path("/tmp") if Path("/tmp").is_dir() else Path(tempfile.gettempdir()))
        self.dir = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=base))
        self.node = node_name()
        self.conf = self.dir / "etc" / "slurm.conf"
        self.munge_socket = self.dir / "munge" / "munge.socket.2"
        self.ports = ports
        """Slurm's own (or those asked for) when free, else two the kernel picks [P12]: every client reads
        them from ``SLURM_CONF``, so nothing else needs to know."""
        self.cpus = 0
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self.daemons = daemons_in(self.dir)
        self.bring_up_s: float | None = None

    # -- what a test uses ----------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        """This environment, pointed at this cluster, with no allocation of its own.

        ``SLURM_*`` variables are dropped: pytest itself may run inside someone's
        allocation, and an inherited ``SLURM_JOB_ID`` or ``SLURM_NTASKS`` would
        change what every ``srun`` does [P9].
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.conf)
        env.update(extra)
        return env

    def run(
        self, *argv: str, timeout: float = COMMAND_TIMEOUT_S, check: bool = True,
        input: str | None = None, env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """A Slurm client command against this cluster, bounded by ``timeout``."""
        command = [self.programs.get(argv[0], argv[0]), *argv[1:]]
        result = subprocess.run(
            command, check=False, input=input, capture_output=True, text=True, timeout=timeout,
            env=dict(env) if env is not None else self.env(),
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise SlurmError(
                f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}\n{self.log_tails()}"
            )
        return result

    def jobs(self) -> list[str]:
        """Ids of the jobs slurmctld still has pending, running or completing."""
        return self.run("squeue", "-h", "-o", "%i").stdout.split()

    def steps(self) -> list[str]:
        """``JOBID.STEPID`` of every live step."""
        return self.run("squeue", "-h", "-s", "-o", "%i").stdout.split()

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-n", self.node, "-o", "%T", check=False).stdout.strip()

    def wait_for_empty_queue(self, timeout: float) -> list[str]:
        """Poll until no job is left or ``timeout`` passes; the job ids still there."""
        deadline = time.monotonic() + timeout
        while (left := self.jobs()) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        return left

    def cancel_all(self) -> None:
        """Cancel every job and wait (bounded) until the queue is empty [P14]."""
        if jobs := self.jobs():
            self.run("scancel", *jobs, check=False)
        if left := self.wait_for_empty_queue(DRAIN_TIMEOUT_S):
            raise SlurmError(f"jobs {left} outlived scancel by {DRAIN_TIMEOUT_S} s\n{self.log_tails()}")

    def log_tails(self) -> str:
        parts = [f"Slurm cluster in {self.dir}:"]
        for daemon in self.daemons:
            console = daemon.log.with_suffix(".console")
            log = daemon.log if daemon.log.exists() or not console.exists() else console
            parts.append(f"--- {log.name} (last lines)\n{_tail(log)}")
        return "\n".join(parts)

    # -- bringing it up ------------------------------------------------------------

    def start(self) -> None:
        """Bring the cluster up, each step bounded; on failure, stop and raise with logs."""
        if self._processes:
            raise SlurmError("this cluster is already running")
        reap_abandoned_clusters(self.programs, self.dir.parent)
        began = time.monotonic()
        try:
            try:
                self._start(self.ports)
            except SlurmError as error:
                # Another cluster (a second pytest session) can take a port between
                # our look at /proc/net/tcp and slurmctld's bind: start again, once,
                # on ports the kernel picks [P12].
                if "Address already in use" not in str(error):
                    raise
                self.stop(remove=False)
                self._clear()
                self._start(free_ports())
        except BaseException:
            self.stop()  # the error carries the log tails; the directory goes
            raise
        self.bring_up_s = time.monotonic() - began

    def _clear(self) -> None:
        for child in self.dir.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()

    def _start(self, ports: tuple[int, int]) -> None:
        (self.dir / OWNER_FILE).write_text(f"{os.getpid()}\n")
        for sub in ("etc", "log", "run", "state", "munge", f"spool/{self.node}"):  # [P4]
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        # munged insists that everyone may traverse to its socket [P2].
        os.chmod(self.dir, 0o755)
        os.chmod(self.dir / "munge", 0o755)
        self._start_munged()
        self.ports = ports if not set(ports) & listening_ports() else free_ports()
        self.cpus, shape = self._node_shape()
        self.conf.write_text(self.config_text(shape))
        self._start_daemon("slurmctld", [self.programs["slurmctld"], "-D", "-f", str(self.conf)],
                           lambda: "is UP" in self.run("scontrol", "ping", check=False).stdout)
        self._start_daemon("slurmd", [self.programs["slurmd"], "-D", "-f", str(self.conf), "-N", self.node],
                           lambda: self.node_state() == "idle")
        smoke = self.run("srun", "-N1", "-n1", "--quiet", "hostname", check=False)
        if smoke.returncode != 0 or smoke.stdout.strip() == "":
            raise SlurmError(f"srun hostname failed ({smoke.returncode}): {smoke.stderr.strip()}\n"
                             f"{self.log_tails()}")

    def _start_munged(self) -> None:
        munge = self.dir / "munge"
        key = munge / "munge.key"
        # A fresh key each time; Debian's postinst wrote /etc/munge/munge.key, never used [P1].
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        argv = [
            self.programs["munged"], "--foreground", f"--key-file={key}", f"--socket={self.munge_socket}",
            f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
            f"--seed-file={munge / 'munged.seed'}",
        ]
        self._start_daemon("munged", argv, self._munge_works)

    def _munge_works(self) -> bool:
        socket_arg = f"--socket={self.munge_socket}"
        try:
            credential = subprocess.run([self.programs["munge"], socket_arg, "-n"], check=False,
                                        capture_output=True, timeout=COMMAND_TIMEOUT_S,
                                        stdin=subprocess.DEVNULL)
            if credential.returncode != 0:
                return False
            decoded = subprocess.run([self.programs["unmunge"], socket_arg], check=False,
                                     input=credential.stdout, capture_output=True,
                                     timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return False
        return decoded.returncode == 0

    def _node_shape(self) -> tuple[int, str]:
        """CPUs and the board/socket/core/thread layout ``slurmd -C`` sees, without
        RealMemory (memory is not consumable with ``CR_CPU``) [P5]."""
        line = subprocess.run([self.programs["slurmd"], "-C"], capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S, check=True,
                              stdin=subprocess.DEVNULL).stdout.splitlines()[0]
        fields = dict(field.split("=", 1) for field in line.split())
        keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
        return int(fields["CPUs"]), " ".join(f"{key}={fields[key]}" for key in keys if key in fields)

    def config_text(self, node_shape: str) -> str:
        d = self.dir
        lines = [
            "ClusterName=mcpitest",
            f"SlurmctldHost={self.node}(127.0.0.1)",  # [P13]
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",  # [P3]
            f"SlurmctldPort={self.ports[0]}",
            f"SlurmdPort={self.ports[1]}",
            f"StateSaveLocation={d}/state",
            f"SlurmdSpoolDir={d}/spool/%n",
            f"SlurmctldPidFile={d}/run/slurmctld.pid",
            f"SlurmdPidFile={d}/run/slurmd.pid",
            f"SlurmctldLogFile={d}/log/slurmctld.log",
            f"SlurmdLogFile={d}/log/slurmd.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "MailProg=/bin/true",  # [P6]
            # No cgroup plugin loads with these three, so no cgroup.conf is needed [P8].
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SelectType=select/cons_tres",
            # CR_Core would give a 1-CPU job a whole core, halving the workers on a
            # machine with two threads per core.
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill",
            "MpiDefault=none",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",  # a shape mismatch never drains the node [P5]
            # Slurm's default 0 keeps a job whose srun died with its shepherd (a group
            # SIGKILL) forever; 10 ends it in ~25-45 s [P9, P14].
            "InactiveLimit=10",
            "KillWait=5",
            "MinJobAge=60",
            f"NodeName={self.node} NodeAddr=127.0.0.1 {node_shape} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO",
        ]
        return "\n".join(lines) + "\n"

    def _start_daemon(self, name: str, argv: list[str], ready: Callable[[], bool]) -> None:
        daemon = next(d for d in self.daemons if d.name == name)
        with open(daemon.log.with_suffix(".console"), "ab") as console:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=console, stderr=console,
                env=self.env(),
                start_new_session=True,  # never gets the terminal's Ctrl-C; stop() ends it
            )
        self._processes[name] = process
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            if process.poll() is not None:
                raise SlurmError(f"{name} exited with {process.returncode} at start-up\n{self.log_tails()}")
            if time.monotonic() > deadline:
                raise SlurmError(f"{name} was not ready within {START_TIMEOUT_S} s\n{self.log_tails()}")
            time.sleep(POLL_S)

    # -- tearing it down -----------------------------------------------------------

    def stop(self, *, remove: bool = True) -> None:
        """Cancel every job, kill what Slurm left, stop the daemons, delete the dir.

        Idempotent, and safe on a cluster that never fully came up. ``remove=False``
        keeps the directory (the logs) for a failure message.
        """
        tear_down(self.programs, self.dir, remove=remove)
        for process in self._processes.values():
            try:
                process.wait(timeout=TERM_GRACE_S)  # reap: tear_down already signalled it
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()


def tear_down(programs: Mapping[str, str], slurm_dir: Path, *, remove: bool = True) -> None:
    """The notes' four-step tear-down of the cluster that lives in ``slurm_dir``.

    Works from the directory alone (pid files, open files, environments), so it also
    ends a cluster whose pytest was SIGKILLed.
    """
    conf = slurm_dir / "etc" / "slurm.conf"
    daemons = _daemon_processes(slurm_dir)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}, "SLURM_CONF": str(conf)}
    controller = daemons.get("slurmctld")
    if controller is not None and controller.is_running() and conf.exists():
        _cancel_every_job(programs, env)
    # slurmstepd outlives slurmd, srun outlives slurmctld [P11]: find them by what
    # they hold (open files in our dir, our SLURM_CONF), and kill only those.
    steps = _step_daemons(slurm_dir)
    doomed = steps + [child for step in steps for child in _descendants(step)]
    _signal(doomed, signal.SIGKILL)
    clients = _clients_of(str(conf))
    _signal(clients, signal.SIGTERM)
    psutil.wait_procs(doomed, timeout=CLIENT_GRACE_S)
    _, stubborn = psutil.wait_procs(clients, timeout=CLIENT_GRACE_S)
    _signal(stubborn, signal.SIGKILL)
    # All three at once: each takes ~2 s to exit [P10].
    running = list(daemons.values()) + _strays(slurm_dir, exclude={p.pid for p in daemons.values()})
    _signal(running, signal.SIGTERM)
    _, stubborn = psutil.wait_procs(running, timeout=TERM_GRACE_S)
    _signal(stubborn, signal.SIGKILL)
    psutil.wait_procs(stubborn, timeout=TERM_GRACE_S)
    if remove:
        shutil.rmtree(slurm_dir, ignore_errors=True)


def _cancel_every_job(programs: Mapping[str, str], env: Mapping[str, str]) -> None:
    def client(*argv: str) -> str:
        try:
            return subprocess.run([programs[argv[0]], *argv[1:]], check=False, capture_output=True, text=True,
                                  timeout=COMMAND_TIMEOUT_S, env=dict(env), stdin=subprocess.DEVNULL).stdout
        except subprocess.TimeoutExpired:
            return ""

    if jobs := client("squeue", "-h", "-o", "%i").split():
        client("scancel", *jobs)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while client("squeue", "-h", "-o", "%i").split() and time.monotonic() < deadline:
            time.sleep(POLL_S)


def _daemon_processes(slurm_dir: Path) -> dict[str, psutil.Process]:
    """Our daemons by pid file, each checked by name so a reused pid is never hit."""
    found = {}
    for daemon in daemons_in(slurm_dir):
        try:
            process = psutil.Process(int(daemon.pid_file.read_text().split()[0]))
            if process.name() == daemon.name and process.status() != psutil.STATUS_ZOMBIE:
                found[daemon.name] = process
        except (OSError, ValueError, IndexError, psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _step_daemons(slurm_dir: Path) -> list[psutil.Process]:
    prefix = f"{slurm_dir}/"
    found = []
    for process in psutil.process_iter(["name"]):
        if process.info["name"] != "slurmstepd":
            continue
        try:
            if any(f.path.startswith(prefix) for f in process.open_files()):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _clients_of(conf: str) -> list[psutil.Process]:
    return [p for p in processes_with_environment("SLURM_CONF", conf) if _name(p) in CLIENT_PROGRAMS]


def _strays(slurm_dir: Path, exclude: set[int]) -> list[psutil.Process]:
    """Processes other than ours whose command line names our directory (a daemon
    whose pid file is gone, a munged a crashed start left)."""
    needle = f"{slurm_dir}/"
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if process.pid in exclude or process.pid == os.getpid():
            continue
        if any(needle in arg for arg in process.info["cmdline"] or ()):
            found.append(process)
    return found


def _name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.NoSuchProcess:
        return ""


def reap_abandoned_clusters(programs: Mapping[str, str], parent: Path) -> None:
    """Tear down clusters under ``parent`` whose starter has died (a SIGKILLed pytest
    never ran its teardown); they would hold their ports and daemons forever."""
    for slurm_dir in parent.glob(f"{DIR_PREFIX}*"):
        try:
            owner = int((slurm_dir / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # starting right now, or not ours
        if not _alive(owner):
            tear_down(programs, slurm_dir)


def running_cluster() -> Iterator[SlurmCluster]:
    """Start a cluster, yield it, and always tear it down (the fixture's body)."""
    cluster = SlurmCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
