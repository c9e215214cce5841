"""Signals and deaths at awkward moments, sent from outside as a judge would send them.

    python benchmarks/signals.py                       # the whole sweep (a few hundred runs)
    python benchmarks/signals.py --only estimate-checkpoint --step 0.05
    python benchmarks/signals.py --list                # the targets and moments, run nothing

Each run starts one command in a session of its own, with a mark in its environment that
every process it starts inherits, and at one moment sends it one signal: SIGINT to its
process group (as a terminal's Ctrl-C), SIGTERM or SIGHUP to its pid; or kills a worker
(SIGKILL), stops a worker (SIGSTOP) and then Ctrl-Cs the command, or stops and continues
the command's group (SIGSTOP, SIGCONT). A moment is a time after the start (every
``--step`` seconds up to ``--until``) or the first stderr line of a
``--log-level debug --log-format json`` run that names an event (``worker_launching``,
the handshake (where a worker told of a large run starts loading the fused kernel in the
background), the load's end, the workers' closing, ``worker_reaped``...). A run that ends
before its moment comes is counted as such ("missed"), not judged as a stopped one.

After each run it checks what an outside judge checks:

- the exit code means something: 0 with a full result (the run finished first), 128 + N
  for the signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP), or death by that very signal
  (only before the command could install its handlers: a shell reports 128 + N too);
- stderr holds no ``Traceback`` and at most one line that is not a JSON log line;
- no process carrying the run's mark is left (the process table, via psutil), apart from
  numba's cache-warming process, which is meant to outlive a run (it is reported and
  waited for, not counted);
- a ``--checkpoint`` run that was stopped resumes (``--resume``) to the count of an
  undisturbed run, bit for bit.

It prints one line per problem and a summary; exit status 0 only if no run had one.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from mcpi_coordinator.testing.processes import wait_until_gone

MARK = "MCPI_TEST_RUN_MARK"
"""The environment variable that marks a run's processes (tests/cli/test_cli_ends.py uses it too)."""
WARMING = "mcpi_worker.kernels.warm"
"""numba's cache-warming process: meant to outlive a run, so not counted as left behind."""
RUN_TIMEOUT_S = 120.0
"""A run still going after this long is reported as hung (and killed)."""
DEBUG = ["--log-level", "debug", "--log-format", "json"]
EVENTS = (
    "worker_launching", "worker_started_early", ": kernels", ": worker_started", ": handshake",
    "worker_ready", "numpy_kernel_implementation", ": closing", ": worker_exiting", "worker_reaped",
)  # fmt: skip
"""Substrings of the debug log's lines the event moments wait for (in the order a run logs
them: the launch, the worker's start, its handshake and kernel load, the pool's readiness,
the shutdown)."""


def venv_bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@dataclass(frozen=True)
class Moment:
    """When the action happens: ``at_s`` after the start, or at the first stderr line
    containing ``event`` (then the command runs with the debug log)."""

    at_s: float | None = None
    event: str | None = None

    def __str__(self) -> str:
        return f"{self.at_s:.3f}s" if self.event is None else f"at {self.event.strip(': ')!r}"


@dataclass(frozen=True)
class Action:
    """What is done at the moment: ``signal`` to the command (``group``: to its process
    group), or to a worker first (``worker_signal``: SIGKILL, or SIGSTOP then the signal to
    the command), or ``pause``: SIGSTOP and SIGCONT to the command's group."""

    name: str
    signal: int | None
    group: bool = False
    worker_signal: int | None = None
    pause: bool = False


ACTIONS: dict[str, Action] = {
    "INT": Action("INT", signal.SIGINT, group=True),
    "TERM": Action("TERM", signal.SIGTERM),
    "HUP": Action("HUP", signal.SIGHUP),
    "KILL-worker": Action("KILL-worker", None, worker_signal=signal.SIGKILL),
    "STOP-worker+INT": Action("STOP-worker+INT", signal.SIGINT, group=True, worker_signal=signal.SIGSTOP),
    "STOP/CONT": Action("STOP/CONT", None, pause=True),
}


@dataclass(frozen=True)
class Target:
    """A command under test: its argv (``{tmp}`` and ``{part}`` filled in), whether it
    writes a checkpoint to resume, whether it takes the debug log, and whether stopping a
    worker makes sense for it (it has workers of its own)."""

    name: str
    argv: tuple[str, ...]
    checkpoint: bool = False
    debug_log: bool = True
    has_workers: bool = True
    client: bool = False
    span: float = 1.0
    """Its timed moments reach ``span`` times ``--until`` (a run that takes longer to
    reach its chunks, or a command over sooner)."""


SEED = "7"
CHECKPOINT_POINTS = "3e8"

TARGETS: dict[str, Target] = {
    target.name: target
    for target in (
        Target("estimate", (venv_bin("mcpi"), "estimate")),
        Target("estimate-json", (venv_bin("mcpi"), "estimate", "--json")),
        Target(
            "estimate-checkpoint",
            (venv_bin("mcpi"), "estimate", "-n", "{points}", "-s", SEED, "--checkpoint", "{tmp}/run.ckpt"),
            checkpoint=True,
            span=2.0,  # its chunks are saved from about a second in (more under load)
        ),
        Target(
            "estimate-worker-cmd", (venv_bin("mcpi"), "estimate", "-w", "1", "--worker-cmd", "mcpi-worker --jobs 2")
        ),
        Target("worker", (venv_bin("mcpi-worker"),), has_workers=False, client=True),
        Target(
            "bench-approaches",
            (venv_bin("mcpi"), "bench", "approaches", "-n", "1e7", "-r", "1", "-w", "2", "-s", SEED),
            debug_log=False,
        ),
        Target("combine", (venv_bin("mcpi"), "combine", "{part}"), debug_log=False, has_workers=False, span=0.4),
    )
}


@dataclass
class Outcome:
    target: str
    action: str
    moment: Moment
    code: int | None
    stderr: str
    problems: list[str] = field(default_factory=list)
    warming: list[int] = field(default_factory=list)
    interrupted_python_start: bool = False
    """Ctrl-C came in Python's own start, before our code (``interpreter_start``)."""
    missed: bool = False
    """The run ended before the moment came: nothing was sent."""

    def line(self) -> str:
        last = self.stderr.strip().splitlines()[-1:] if self.stderr.strip() else [""]
        return f"{self.target:20} {self.action:16} {self.moment!s:24} exit {self.code!s:>4}  {last[0][:100]}"


def marked(mark: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARK) == mark:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def is_warming(process: psutil.Process) -> bool:
    try:
        return WARMING in " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def is_worker(process: psutil.Process) -> bool:
    """``python -m mcpi_worker`` (the default worker command) or the ``mcpi-worker`` script."""
    try:
        line = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return ("mcpi_worker" in line or "mcpi-worker" in line) and WARMING not in line


def workers_of(mark: str, coordinator: int) -> list[psutil.Process]:
    return [process for process in marked(mark) if process.pid != coordinator and is_worker(process)]


def drive_worker(process: subprocess.Popen[bytes], stop: threading.Event) -> None:
    """A client for a bare ``mcpi-worker``: hello, then samples, one after another, reading
    every answer, until the worker closes its output or ``stop`` is set."""
    from mcpi_worker.protocol import WORKER_MESSAGES, FrameDecoder, Hello, NeedData, Sample, Shutdown, encode

    assert process.stdin is not None and process.stdout is not None
    decoder = FrameDecoder(WORKER_MESSAGES)
    try:
        os.write(process.stdin.fileno(), encode(Hello(versions=(2,), client="signals-sweep")))
        request = 0
        while not stop.is_set():
            request += 1
            os.write(process.stdin.fileno(), encode(Sample(request, 7, request, 20_000_000, "numpy")))
            answered = False
            while not answered:
                while isinstance(message := decoder.next_message(), NeedData):
                    data = os.read(process.stdout.fileno(), 65536)
                    if not data:
                        return
                    decoder.feed(data)
                answered = getattr(message, "id", None) == request
        os.write(process.stdin.fileno(), encode(Shutdown()))
    except OSError:  # the worker went away: what the sweep is about
        return


def run_one(
    target: Target,
    action: Action,
    moment: Moment,
    tmp: Path,
    part: Path,
    reference: int | None,
    checkpoint_points: str = CHECKPOINT_POINTS,
) -> Outcome:
    mark = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPI_")}
    env[MARK] = mark
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # our mcpi-worker
    ckpt = tmp / "run.ckpt"
    ckpt.unlink(missing_ok=True)
    argv = [word.format(tmp=tmp, part=part, points=checkpoint_points) for word in target.argv]
    if moment.event is not None:
        argv += DEBUG
    started = time.monotonic()
    process = subprocess.Popen(
        argv, stdin=subprocess.PIPE if target.client else subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=env, start_new_session=True, cwd=tmp,
    )  # fmt: skip
    seen = threading.Event()
    lines: list[str] = []
    stdout: list[bytes] = []

    def read_stderr() -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            line = raw.decode(errors="replace")
            lines.append(line)
            if moment.event is not None and moment.event in line:
                seen.set()
        seen.set()  # the end of stderr: a moment that will never come (a run too short for it)

    def read_stdout() -> None:
        assert process.stdout is not None
        if not target.client:
            stdout.append(process.stdout.read())

    stop_client = threading.Event()
    threads = [threading.Thread(target=read_stderr, daemon=True), threading.Thread(target=read_stdout, daemon=True)]
    if target.client:
        threads.append(threading.Thread(target=drive_worker, args=(process, stop_client), daemon=True))
    for thread in threads:
        thread.start()
    if moment.event is not None:
        reached = seen.wait(RUN_TIMEOUT_S)
    else:
        assert moment.at_s is not None
        time.sleep(max(0.0, started + moment.at_s - time.monotonic()))
        reached = True
    outcome = Outcome(target.name, action.name, moment, None, "")
    if reached and process.poll() is None:
        act(process.pid, mark, action)
    else:
        outcome.missed = True
    # The bare worker's client then asks it to shut down: Ctrl-C is its owner's to act on
    # (it ignores SIGINT on a pipe), so it must carry on until then and end with exit 0.
    stop_client.set()
    try:
        process.wait(RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        outcome.problems.append(f"hung: still running {RUN_TIMEOUT_S:.0f} s after the start")
        for leftover in marked(mark):
            leftover.kill()
        process.wait()
    for thread in threads[:2]:
        thread.join(10)
    outcome.code = process.returncode
    outcome.stderr = "".join(lines)
    judge(outcome, target, None if outcome.missed else action, b"".join(stdout).decode(errors="replace"))
    left_over(outcome, mark)
    if target.checkpoint and reference is not None and outcome.code not in (None, 0) and ckpt.exists():
        resumed(outcome, ckpt, env, reference)
    return outcome


def act(pid: int, mark: str, action: Action) -> None:
    """Do ``action`` to the command ``pid`` (a session leader) or its workers."""
    try:
        if action.pause:
            os.killpg(pid, signal.SIGSTOP)
            time.sleep(0.3)
            os.killpg(pid, signal.SIGCONT)
            return
        if action.worker_signal is not None:
            workers = workers_of(mark, pid)
            if workers:
                workers[0].send_signal(action.worker_signal)
        if action.signal is not None:
            if action.group:
                os.killpg(pid, action.signal)
            else:
                os.kill(pid, action.signal)
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass


def interpreter_start(stderr: str) -> bool:
    """A ``KeyboardInterrupt`` traceback from Python's own start (``site``, the ``.pth``
    files, the modules it loads first), before any of our code ran: Python's own SIGINT
    handler is in force there, for every Python command, and no code of ours can change
    it."""
    frames = [line for line in stderr.splitlines() if line.lstrip().startswith("File ")]
    ours = [line for line in frames if "/mcpi_coordinator/" in line or "/mcpi_worker/" in line]
    return "KeyboardInterrupt" in stderr and not ours


def judge(outcome: Outcome, target: Target, action: Action | None, stdout: str) -> None:
    """The exit code and stderr of a run that ``action`` was done to (None: nothing was)."""
    code = outcome.code
    assert code is not None
    if "Traceback" in outcome.stderr and not interpreter_start(outcome.stderr):
        outcome.problems.append("a traceback on stderr")
    elif "Traceback" in outcome.stderr:
        outcome.interrupted_python_start = True
        return
    loose = [line for line in outcome.stderr.splitlines() if line.strip() and not line.startswith("{")]
    if len(loose) > 1:
        outcome.problems.append(f"{len(loose)} lines on stderr besides the log")
    sent = None if action is None else action.signal
    if code == 0:
        if target.client or target.name == "combine" or sent is None:
            return
        if not stdout.strip():
            outcome.problems.append("exit 0 without a result on stdout")
        return
    if sent is None:  # nothing sent, a worker SIGKILLed or the group paused: the run must finish
        outcome.problems.append(f"exit {code} where the run should have finished")
        return
    if code in (128 + sent, -sent):
        if target.client and code == 128 + sent:
            return
        if code == -sent and loose:
            outcome.problems.append(f"died by signal {sent} yet wrote {loose[-1][:80]!r}")
        return
    outcome.problems.append(f"exit {code} does not say signal {sent}")


def left_over(outcome: Outcome, mark: str) -> None:
    processes = marked(mark)
    outcome.warming = [process.pid for process in processes if is_warming(process)]
    others = [process.pid for process in processes if process.pid not in outcome.warming]
    left, _ = wait_until_gone(others, timeout_s=5)
    if left:
        described = []
        for pid in left:
            try:
                described.append(f"{pid} {' '.join(psutil.Process(pid).cmdline())[:80]}")
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        outcome.problems.append(f"left running: {described}")


def resumed(outcome: Outcome, ckpt: Path, env: dict[str, str], reference: int) -> None:
    done = subprocess.run(
        [venv_bin("mcpi"), "estimate", "--resume", str(ckpt), "--json", "-q"],
        capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        outcome.problems.append(f"--resume failed (exit {done.returncode}): {done.stderr.strip()[-200:]}")
        return
    inside = json.loads(done.stdout)["inside"]
    if inside != reference:
        outcome.problems.append(f"resumed count {inside} != undisturbed {reference}")


def plan(args: argparse.Namespace) -> list[tuple[Target, Action, Moment]]:
    times = [round(i * args.step, 3) for i in range(int(args.until / args.step) + 1)]
    runs: list[tuple[Target, Action, Moment]] = []
    for target in TARGETS.values():
        if args.only and target.name not in args.only:
            continue
        stops = [ACTIONS[name] for name in ("INT", "TERM", "HUP")]
        spacing = 1 if target.name in ("estimate", "estimate-checkpoint") else 2
        for action in stops:
            runs += [(target, action, Moment(at_s=round(t * target.span, 3))) for t in times[::spacing]]
        if args.timed_only:
            continue
        if target.debug_log and not target.client:
            for action in stops:
                runs += [(target, action, Moment(event=event)) for event in EVENTS]
        if target.has_workers and target.debug_log:
            for name in ("KILL-worker", "STOP-worker+INT"):
                runs += [(target, ACTIONS[name], Moment(event=event)) for event in EVENTS[4:9]]
            runs += [(target, ACTIONS["STOP/CONT"], Moment(at_s=t)) for t in times[::6]]
    return runs


def reference_count(env: dict[str, str], points: str) -> int:
    done = subprocess.run(
        [venv_bin("mcpi"), "estimate", "-n", points, "-s", SEED, "--json", "-q"],
        capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S, check=True,
    )  # fmt: skip
    return int(json.loads(done.stdout)["inside"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--step", type=float, default=0.06, help="seconds between timed moments (default 0.06)")
    parser.add_argument("--until", type=float, default=1.5, help="last timed moment, seconds (default 1.5)")
    parser.add_argument("--only", type=lambda text: text.split(","), default=None, help="targets, comma-separated")
    parser.add_argument("--list", action="store_true", help="print the runs and exit")
    parser.add_argument(
        "--checkpoint-points",
        default=CHECKPOINT_POINTS,
        help=f"points of the --checkpoint run (default {CHECKPOINT_POINTS}; more lets a stop land between saves)",
    )
    parser.add_argument("--timed-only", action="store_true", help="only the timed moments, no events or worker actions")
    parser.add_argument("-v", "--verbose", action="store_true", help="a line per run, not only per problem")
    args = parser.parse_args(argv)
    # Started in the background by a script, this process ignores SIGINT, and so would every
    # command it starts: a Ctrl-C would then rightly be ignored. Python's handler here gives
    # the commands the default disposition, as a terminal's foreground job has.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    runs = plan(args)
    if args.list:
        for target, action, moment in runs:
            print(f"{target.name:20} {action.name:16} {moment}")
        print(f"{len(runs)} runs")
        return 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPI_")}
    reference = reference_count(env, args.checkpoint_points)
    load = os.getloadavg()
    print(f"signals sweep: {len(runs)} runs; load {load[0]:.2f}; undisturbed count {reference}", flush=True)
    counts: dict[str, int] = {}
    bad: list[Outcome] = []
    warming: set[int] = set()
    missed = 0
    python_start = 0
    with tempfile.TemporaryDirectory(prefix="mcpi-signals-") as scratch:
        tmp = Path(scratch)
        part = tmp / "part.json"
        part.write_text(
            subprocess.run(
                [venv_bin("mcpi"), "estimate", "-n", "2e7", "-s", SEED, "--json", "-q"],
                capture_output=True,
                text=True,
                env=env,
                check=True,
                timeout=RUN_TIMEOUT_S,
            ).stdout
        )
        for index, (target, action, moment) in enumerate(runs):
            outcome = run_one(target, action, moment, tmp, part, reference, args.checkpoint_points)
            key = f"exit {outcome.code}"
            counts[key] = counts.get(key, 0) + 1
            warming.update(outcome.warming)
            missed += outcome.missed
            python_start += outcome.interrupted_python_start
            if outcome.problems:
                bad.append(outcome)
                print(
                    f"[{index + 1}/{len(runs)}] PROBLEM {outcome.line()}\n    " + "; ".join(outcome.problems),
                    flush=True,
                )
            elif args.verbose:
                print(f"[{index + 1}/{len(runs)}] ok      {outcome.line()}", flush=True)
    left, _ = wait_until_gone(warming, timeout_s=120)
    load = os.getloadavg()
    print(
        f"\n{len(runs)} runs, {len(bad)} with problems; exit codes: "
        + ", ".join(f"{key} x{n}" for key, n in sorted(counts.items()))
    )
    print(f"runs that ended before their moment came (nothing sent): {missed}")
    print(f"Ctrl-C in Python's own start, before our code (a traceback no code of ours can stop): {python_start}")
    print(f"warming processes seen: {len(warming)}, still running 120 s after the sweep: {left}")
    print(f"load average now {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    kinds: dict[str, int] = {}
    for outcome in bad:
        for problem in outcome.problems:
            kind = f"{outcome.target} {outcome.action}: {problem.split(':')[0][:60]}"
            kinds[kind] = kinds.get(kind, 0) + 1
    for kind, n in sorted(kinds.items()):
        print(f"  {n:3} x {kind}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
