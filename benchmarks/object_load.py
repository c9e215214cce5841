"""The object cache's load in a fresh process, through each of ``llvm_link``'s two ways.

    python benchmarks/object_load.py [--rounds 9]

A worker told of a long run loads our object cache of the fused kernels (``kernels/native.py``)
at its start, before its ``hello``: with two workers on two cores, beside its coordinator's own
start. Each round starts two fresh interpreters of this installation, in turn (which one
first alternates), and each loads the object (``native.load``, then ``checks.verify``, as
``choice.load_native`` does) through one way:

- ``direct``: ``llvm_link.link_backend()``, what a worker takes (``DirectLink``, libllvmlite's
  C entry points through ctypes, where llvmlite is a version it was checked against);
- ``binding``: ``llvm_link.BindingLink``, through ``llvmlite.binding`` (what every worker
  did before).

Each reports the CPU time of its load (``time.process_time`` around it: the import of
llvmlite's modules and the library's ``dlopen`` are in it; the interpreter's start and the
worker's own modules, imported before, are not) and which link it took. Prints each
round, the medians, their ratio and the load average. CPU, not wall: it holds on a busy
machine better than a wall does. Needs a warm object cache for this installation (any
``mcpi estimate`` after the install writes it; the script says so if it is missing).
Bytecode caches are allowed, as for an installed package.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = """
import json, sys, time
from mcpi_worker.kernels import llvm_link, native
from mcpi_worker.kernels.checks import verify

start = time.process_time()
link = llvm_link.link_backend() if sys.argv[1] == "direct" else llvm_link.BindingLink()
loaded = native.load(link=link)
verify(loaded.compiled)
cpu = time.process_time() - start
print(json.dumps({"cpu": cpu, "link": type(link).__name__, "binding": "llvmlite.binding" in sys.modules}))
"""

WAYS = ("direct", "binding")


def load_once(way: str) -> dict[str, object]:
    environ = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run(
        [sys.executable, "-P", "-c", CHILD, way], capture_output=True, text=True, env=environ, check=False, timeout=120
    )
    if done.returncode != 0:
        sys.exit(f"object_load: the {way} load failed (is the object cache warm? run mcpi estimate once):\n"
                 f"{done.stderr.strip()}")  # fmt: skip
    result: dict[str, object] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} / {os.getloadavg()[1]:.2f} on {os.cpu_count()} CPUs")
    for way in WAYS:
        load_once(way)  # untimed: bytecode caches written, the files in the page cache
    cpu: dict[str, list[float]] = {way: [] for way in WAYS}
    for round_ in range(args.rounds):
        order = WAYS if round_ % 2 == 0 else WAYS[::-1]
        seen = {way: load_once(way) for way in order}
        for way in WAYS:
            cpu[way].append(float(seen[way]["cpu"]))  # type: ignore[arg-type]
        print(
            f"  round {round_ + 1}: "
            + ", ".join(f"{way} {1e3 * float(seen[way]['cpu']):.1f} ms ({seen[way]['link']})" for way in WAYS)  # type: ignore[arg-type]
        )
    direct, binding = (statistics.median(cpu[way]) for way in WAYS)
    print(f"median CPU of a load: direct {1e3 * direct:.1f} ms, binding {1e3 * binding:.1f} ms: "
          f"direct / binding {direct / binding:.2f}x")  # fmt: skip
    print(f"load average {os.getloadavg()[0]:.2f} / {os.getloadavg()[1]:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
