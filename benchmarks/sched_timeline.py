"""Where a whole ``mcpi estimate`` goes on the CPUs, process by process and thread by thread.

    python benchmarks/sched_timeline.py [--workers 2] [--points 1e10] [--rounds 3] [--against PYTHON]

``--workers 1,2`` traces each worker count in every round (interleaved: both see the same
load), and ``--against PYTHON`` (the interpreter of another tree's venv, whose ``mcpi`` is
beside it) runs that tree's command in the same rounds, so a change is read against the
code before it under the same conditions.

Runs ``mcpi estimate --points P --workers W --json`` (the ``mcpi`` beside this interpreter)
under ``perf record -a`` with the scheduler's tracepoints (every switch on and off a CPU,
process starts, forks and exits) and the ``write`` system call's (the protocol's frames:
the coordinator's writes to a worker's stdin, a worker's to its protocol descriptor), and
prints for each round, in milliseconds after the command's ``exec``:

- when each worker was spawned, when the coordinator sent its ``hello``, its first request,
  each worker's first and last answer, the command's exit: who ends first, and how long
  the other counts alone;
- the CPU time of every process and thread of the command, before the ``hello``, from it
  to the last answer, and after: the coordinator's wake-ups during the run (its slices on a
  CPU), each worker's reader thread and kernel-loading thread;
- the coordinator's CPU before the first worker's spawn and from the spawn to the ``hello``.

Then the medians over ``--rounds``, for each command: the phases above, and the CPU of the
coordinator, of the workers' main threads and of their other threads (the kernel's loading
thread, the reader), each before the ``hello``, from it to the last answer and after, and
all of it together: what the two-worker command spends beyond the one-worker one, phase by
phase (a median of sums is not the sum of medians: read the ``all`` rows as their own
figures). On-CPU times are the scheduler's own accounting, so
they hold on a busy machine (the wall moments do not: quote the load, printed). Needs
``perf`` with system-wide tracepoints (root, or ``kernel.perf_event_paranoid`` at -1).
Bytecode caches are allowed, as for an installed package.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mcpi_coordinator.arguments import count

EVENTS = ["sched:sched_switch", "sched:sched_process_exec", "sched:sched_process_exit", "sched:sched_process_fork"]
HEAD = re.compile(r"^\s*(.*?)\s+(\d+)\s+\[(\d+)\]\s+(\d+\.\d+):\s+(\S+):\s*(.*)$")
FORK = re.compile(r" pid=(\d+) child_comm=.* child_pid=(\d+)")
SWITCH = re.compile(r"prev_pid=(\d+) .*prev_state=(\S+) ==> next_comm=.* next_pid=(\d+)")
WRITE = re.compile(r"fd: 0x([0-9a-f]+), buf: \S+, count: 0x([0-9a-f]+)")
PROTOCOL_FD = 3
"""The worker's private duplicate of its stdout that carries the protocol (``main._take_stdout``)."""


@dataclass
class Trace:
    """One command's tasks: who forked whom, what each exec'd, its slices on a CPU, its writes."""

    root: int = 0
    start: float = 0.0
    parent: dict[int, int] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    execs: dict[int, float] = field(default_factory=dict)
    exits: dict[int, float] = field(default_factory=dict)
    slices: dict[int, list[tuple[float, float]]] = field(default_factory=lambda: collections.defaultdict(list))
    writes: dict[int, list[tuple[float, int, int]]] = field(default_factory=lambda: collections.defaultdict(list))

    def process(self, tid: int) -> int:
        while tid not in self.execs and tid in self.parent:
            tid = self.parent[tid]
        return tid

    def cpu(self, tid: int, after: float = -1e18, before: float = 1e18) -> tuple[float, int]:
        """On-CPU milliseconds of ``tid`` between two moments, and its slices there."""
        inside = [(max(s, after), min(e, before)) for s, e in self.slices[tid] if s < before and e > after]
        return sum(e - s for s, e in inside), len(inside)


def parse(script: str, command: str) -> Trace:
    trace = Trace()
    on_cpu: dict[int, float] = {}
    tids: set[int] = set()
    for line in script.splitlines():
        match = HEAD.match(line)
        if match is None:
            continue
        _, tid_text, _, time_text, event, rest = match.groups()
        tid, now = int(tid_text), float(time_text) * 1000
        if event.endswith("sched_process_exec") and not trace.root and rest.startswith(f"filename={command}"):
            trace.root, trace.start = tid, now
            tids.add(tid)
            trace.execs[tid], trace.names[tid] = now, "coordinator"
        if not trace.root:
            continue
        if event.endswith("sched_process_fork"):
            forked = FORK.search(rest)
            if forked and (tid in tids or int(forked.group(1)) in tids):
                tids.add(int(forked.group(2)))
                trace.parent[int(forked.group(2))] = tid
        elif event.endswith("sched_process_exec") and tid in tids and tid != trace.root:
            trace.execs[tid] = now
            trace.names[tid] = rest.split("filename=")[1].split()[0].rsplit("/", 1)[-1]
        elif event.endswith("sched_process_exit") and tid in tids:
            trace.exits[tid] = now
        elif event.endswith("sched_switch"):
            switch = SWITCH.search(rest)
            if switch is None:
                continue
            previous, following = int(switch.group(1)), int(switch.group(3))
            if previous in on_cpu:
                trace.slices[previous].append((on_cpu.pop(previous), now))
            if following in tids:
                on_cpu[following] = now
        elif event.endswith("sys_enter_write") and tid in tids:
            written = WRITE.search(rest)
            if written:
                trace.writes[tid].append((now, int(written.group(1), 16), int(written.group(2), 16)))
    return trace


def one_round(python: Path, workers: int, points: int, data: Path) -> dict[str, float]:
    mcpi = python.with_name("mcpi")
    argv = [str(mcpi), "estimate", "--points", str(points), "--workers", str(workers), "--json", "--seed", "20240611"]
    # perf's own writes would be traced too (and feed themselves): a filter leaves out the
    # process that execs perf, whose pid the shell knows as $$.
    record = (
        f"exec perf record -q -a -o {data} " + " ".join(f"-e {e}" for e in EVENTS)
        + " -e syscalls:sys_enter_write --filter 'common_pid != '$$ -- " + " ".join(argv)
    )  # fmt: skip
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE" and not k.startswith("MCPI_")}
    subprocess.run(["sh", "-c", record], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environ)
    script = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "comm,tid,cpu,time,event,trace"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    trace = parse(script, str(mcpi))
    return report(trace)


def report(trace: Trace) -> dict[str, float]:
    root, t0 = trace.root, trace.start
    workers = sorted(p for p in trace.execs if p != root and trace.names[p].startswith("python"))
    spawn = min(trace.execs[w] for w in workers)
    # The first write past stderr after a worker exists: one before (Trio's wake-up socket,
    # say) is no hello, and was taken for one.
    hello = min(t for t, fd, _ in trace.writes[root] if fd > 2 and t > spawn)
    requests = sorted(t for t, fd, _ in trace.writes[root] if fd > 2 and t > hello + 0.001)
    answers = {w: sorted(t for tid, ws in trace.writes.items() if trace.process(tid) == w for t, fd, _ in ws
                         if fd == PROTOCOL_FD) for w in workers}  # fmt: skip
    last = max(a[-1] for a in answers.values())
    figures = {
        "spawn": spawn - t0,
        "hello": hello - t0,
        "first request": requests[0] - t0 if requests else float("nan"),
        "last answer": last - t0,
        "one worker alone at the end": last - min(a[-1] for a in answers.values()),
        "exit": trace.exits.get(root, float("nan")) - t0,
        "coordinator CPU before the spawn": trace.cpu(root, before=spawn)[0],
        "coordinator CPU spawn..hello": trace.cpu(root, spawn, hello)[0],
        "coordinator CPU during the run": trace.cpu(root, hello, last)[0],
        "coordinator slices during the run": trace.cpu(root, hello, last)[1],
        "coordinator CPU after the last answer": trace.cpu(root, last)[0],
    }
    print(f"  ms after the command's exec: workers spawned at {figures['spawn']:.1f}, hello {figures['hello']:.1f}, "
          f"first request {figures['first request']:.1f}, last answer {figures['last answer']:.1f}, "
          f"command gone {figures['exit']:.1f}")  # fmt: skip
    for index, worker in enumerate(workers):
        a = answers[worker]  # its welcome, then its answers
        first = a[1] - t0 if len(a) > 1 else float("nan")
        print(f"  worker {index} (pid {worker}): spawned {trace.execs[worker] - t0:.1f}; "
              f"{len(a) - 1} answers, first {first:.1f}, last {a[-1] - t0:.1f}")  # fmt: skip
    print(f"  {'task':44} {'CPU ms: before hello':>20} {'hello..last answer':>19} {'after':>6}   slices in the run")
    for tid in sorted(trace.slices, key=lambda t: trace.slices[t][0][0]):
        process = trace.process(tid)
        if process != root and process not in workers:
            continue
        name = "coordinator" if process == root else f"worker {workers.index(process)}"
        name += "" if process == tid else f" thread {tid}"
        before, during, after = trace.cpu(tid, before=hello), trace.cpu(tid, hello, last), trace.cpu(tid, last)
        print(f"  {name:44} {before[0]:20.1f} {during[0]:19.1f} {after[0]:6.1f}   {during[1]}")
    for index, worker in enumerate(workers):
        figures[f"worker {index} CPU"] = sum(trace.cpu(t)[0] for t in trace.slices if trace.process(t) == worker)
    figures.update(phases(trace, workers, hello, last))
    return figures


PHASES = ("before hello", "hello..last answer", "after")


def phases(trace: Trace, workers: list[int], hello: float, last: float) -> dict[str, float]:
    """CPU ms of each role (the coordinator, the workers' main threads, their other
    threads) in each phase, and the totals."""
    figures: dict[str, float] = {}
    for role in ("coordinator", "workers' main threads", "workers' other threads", "all"):
        for index, (after, before) in enumerate(((-1e18, hello), (hello, last), (last, 1e18))):
            total = 0.0
            for tid in trace.slices:
                process = trace.process(tid)
                if role == "coordinator":
                    chosen = process == trace.root
                elif role == "all":
                    chosen = process == trace.root or process in workers
                else:
                    chosen = process in workers and (process == tid) == (role == "workers' main threads")
                if chosen:
                    total += trace.cpu(tid, after, before)[0]
            figures[f"{role}, {PHASES[index]}"] = total
        figures[f"{role}, in all"] = sum(figures[f"{role}, {phase}"] for phase in PHASES)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="2", help="a worker count, or several: 1,2")
    parser.add_argument("--points", type=count, default=10**10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--against", type=Path, help="another tree's venv interpreter, run in the same rounds")
    args = parser.parse_args()
    try:
        counts = [int(text) for text in args.workers.split(",")]
    except ValueError:
        parser.error(f"--workers: whole numbers separated by commas, not {args.workers!r}")
    if not counts or min(counts) < 1:
        parser.error("--workers: at least one worker")
    pythons = {"": Path(sys.executable)}
    if args.against is not None:
        pythons = {"this tree, ": Path(sys.executable), "against, ": args.against}
    commands = [(tree, python, workers) for workers in counts for tree, python in pythons.items()]
    rounds: dict[str, list[dict[str, float]]] = {f"{tree}--workers {workers}": [] for tree, _, workers in commands}
    with tempfile.TemporaryDirectory() as directory:
        for number in range(args.rounds):
            shift = number % len(commands)
            for tree, python, workers in commands[shift:] + commands[:shift]:
                load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
                print(f"round {number + 1}: {tree}mcpi estimate --points {args.points:.0e} --workers {workers}; "
                      f"load {load}")  # fmt: skip
                figures = one_round(python, workers, args.points, Path(directory) / "perf.data")
                rounds[f"{tree}--workers {workers}"].append(figures)
    names = list(rounds)
    print(f"medians of {args.rounds} rounds (ms); load average after: "
          + " / ".join(f"{x:.2f}" for x in os.getloadavg()))  # fmt: skip
    print(f"  {'':48}" + "".join(f"{name:>26}" for name in names))
    for figure in dict.fromkeys(key for runs in rounds.values() for run in runs for key in run):
        values = []
        for name in names:
            present = [run[figure] for run in rounds[name] if figure in run]
            values.append(f"{statistics.median(present):26.1f}" if present else f"{'-':>26}")
        print(f"  {figure:48}" + "".join(values))


if __name__ == "__main__":
    main()
