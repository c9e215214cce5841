"""Where a tiny run's wall goes, in both processes, as the kernel saw it (strace timestamps).

    python benchmarks/timeline.py [--rounds 9] [--points 1000] [--imports] [--mcpi-args "WORDS"]

Runs ``python -m mcpi_coordinator estimate --points 1000 --seed 7 --json`` (the command
``benchmarks/tiny.py`` times) ``--rounds`` times under ``strace -f`` with a seccomp filter, so
that only the few system calls it traces stop the processes (process starts and ends, and
writes: the protocol's frames, the printed result), and prints for each moment the median
(and least) milliseconds after the command's start: the early worker spawned and running,
Trio's ``/sbin/ldconfig -p`` (its import runs it, through ``ctypes.util.find_library``),
the worker's reader thread up (ready for the handshake), ``hello``, ``welcome``, the
``sample`` and its ``result``, ``shutdown``, the worker gone, the result printed, the
command gone; then the intervals between them that make up the wall. ``--imports`` also
traces file opens, to mark where the command starts importing Trio and where the worker
starts importing NumPy (it slows every import a little: read the other moments without
it). The debug logs (``benchmarks/tiny.py --timeline``) show fewer moments and move them:
at ``--log-level debug`` both processes load structlog first. strace slows a worker's
threads beside each other (a worker told of a small run imports NumPy on a thread of its
own before its first request: under strace that import still runs when the ``sample``
comes, without it it is done), so read the whole command's wall from ``tiny.py``.

Needs ``strace`` (5.3 or later, for ``--seccomp-bpf``); bytecode caches are allowed, as for
an installed package. Run it with the interpreter of the installation to time.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile

NEUTRAL = tempfile.gettempdir()
"""Where the command runs: from a checkout, ``python -m`` would import the checkout's code."""

TRACED = "execve,vfork,clone,clone3,exit_group,write"
LINE = re.compile(r"(\d+) +(\d+\.\d+) (.*)")
THREAD = re.compile(r"^(?:clone3\(|<\.\.\. clone3 resumed>).*\) = (\d+)$")
TRIO = re.compile(r"/trio/(__pycache__/)?__init__")
FRAMES = {"hello": "command: hello sent", "welcome": "worker: welcome sent", "sample": "command: sample sent",
          "result": "worker: result sent", "shutdown": "command: shutdown sent"}  # fmt: skip
INTERVALS = (
    ("command's own start, to the worker's spawn", "command started", "command: worker spawned"),
    ("worker's start, to its reader thread", "command: worker spawned", "worker: reader thread up"),
    ("worker ready, waiting for the hello", "worker: reader thread up", "command: hello sent"),
    ("hello to sample", "command: hello sent", "command: sample sent"),
    ("the sample, to its result", "command: sample sent", "worker: result sent"),
    ("result to shutdown", "worker: result sent", "command: shutdown sent"),
    ("shutdown to the worker gone", "command: shutdown sent", "worker: gone"),
    ("worker gone to the result printed", "worker: gone", "command: result printed"),
    ("result printed to the command gone", "command: result printed", "command: gone"),
)


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE" and not k.startswith("MCPI_")}


def moments(trace: str) -> dict[str, float]:
    """Milliseconds after the command's start of each moment seen in one ``strace -f -ttt`` output."""
    seen: dict[str, float] = {}
    start = command = worker = ldconfig = None
    forked: float | None = None
    process: dict[int, int] = {}
    for line in trace.splitlines():
        match = LINE.match(line)
        if match is None:
            continue
        tid, when, call = int(match[1]), float(match[2]), match[3]
        pid = process.get(tid, tid)
        thread = THREAD.search(call)
        if thread is not None:
            process[int(thread[1])] = pid  # a thread of this process: its calls are the process's
        if start is None:
            start, command = when, pid
            seen["command started"] = 0.0
        ms = (when - start) * 1000
        mark = seen.setdefault
        if call.startswith(("vfork(", "clone(")) and "CLONE_THREAD" not in call:
            forked = ms  # the parent waits in vfork until the child's exec: the spawn is the last one
        elif call.startswith("execve(") and '"mcpi_worker"' in call and worker is None:
            worker = pid
            seen["command: worker spawned"] = forked if forked is not None else ms
            mark("worker: running (exec)", ms)
        elif call.startswith("execve(") and "ldconfig" in call:
            ldconfig = pid
            mark("command: Trio's ldconfig started", ms)
        elif pid == worker and call.startswith("clone3("):
            mark("worker: reader thread up", ms)
        elif call.startswith("write("):
            for word, name in FRAMES.items():
                if f"\\{len(word) + 0xA0:o}{word}" in call:  # msgpack's header of a short string
                    mark(name, ms)
        if pid == command and call.startswith("write(1,"):
            mark("command: result printed", ms)
        if "+++ exited" in call or "+++ killed" in call:
            if tid == worker:  # the process, not one of its threads
                mark("worker: gone", ms)
            elif tid == ldconfig:
                mark("command: Trio's ldconfig ended", ms)
            elif tid == command:
                mark("command: gone", ms)
        if call.startswith("openat(") and pid == command and TRIO.search(call):
            mark("command: Trio import starts", ms)
        if call.startswith("openat(") and pid == worker and "/numpy/" in call:
            mark("worker: NumPy import starts", ms)
    return seen


def one_run(argv: list[str], imports: bool) -> dict[str, float]:
    with tempfile.NamedTemporaryFile(suffix=".strace") as out:
        traced = TRACED + (",openat" if imports else "")
        strace = ["strace", "-f", "-ttt", "-s", "200", "--seccomp-bpf", "-e", f"trace={traced}", "-o", out.name]
        done = subprocess.run([*strace, *argv], capture_output=True, text=True, env=environment(), cwd=NEUTRAL,
                              check=False)  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"{shlex.join(argv)} failed under strace ({done.returncode}): {done.stderr.strip()}")
        with open(out.name, encoding="utf-8", errors="replace") as trace:
            return moments(trace.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--imports", action="store_true", help="also trace file opens (Trio's and NumPy's imports)")
    parser.add_argument("--mcpi-args", default="", metavar="WORDS", help="more words for the mcpi command line")
    args = parser.parse_args()
    if shutil.which("strace") is None:
        raise SystemExit("timeline.py needs strace (apt-get install strace)")
    argv = [sys.executable, "-m", "mcpi_coordinator", "estimate", "--points", str(args.points), "--seed", "7",
            "--json", *shlex.split(args.mcpi_args)]  # fmt: skip
    print(f"timeline of {shlex.join(argv[1:])}, {args.rounds} runs under strace -f --seccomp-bpf")
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} CPUs")
    one_run(argv, args.imports)  # untimed: writes the bytecode caches
    runs = [one_run(argv, args.imports) for _ in range(args.rounds)]
    names = {name for run in runs for name in run}
    table = {name: [run[name] for run in runs if name in run] for name in names}
    print(f"\n{'ms after start':>14}  {'least':>7}  moment (median of the runs that saw it)")
    for name in sorted(table, key=lambda n: statistics.median(table[n])):
        values = table[name]
        seen = "" if len(values) == len(runs) else f"  (in {len(values)} of {len(runs)} runs)"
        print(f"{statistics.median(values):14.1f}  {min(values):7.1f}  {name}{seen}")
    print(f"\n{'ms':>14}  interval (median over the runs, each run's own difference)")
    for label, first, then in INTERVALS:
        spans = [run[then] - run[first] for run in runs if first in run and then in run]
        if spans:
            print(f"{statistics.median(spans):14.1f}  {label}")
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) after")


if __name__ == "__main__":
    main()
