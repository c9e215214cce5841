"""What ``mcpi`` imports to answer without running anything (issue 20, item 10):
``--help``, ``--version``, a usage error and a TAB completion load none of Trio, NumPy,
structlog, rich or the worker's kernels. Checked on the module list ``python -X
importtime`` prints, never on a clock (``benchmarks/cli.py`` measures the time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from mcpi_coordinator.cli import facts
from mcpi_coordinator.cli.commands import COMMANDS
from mcpi_coordinator.cli.main import build_parser

HEAVY = (
    "trio",
    "numpy",
    "structlog",
    "rich",
    "msgpack",
    "mcpi_worker.kernels",
    "mcpi_worker.protocol",
    "mcpi_coordinator.pool",
    "mcpi_coordinator.run.estimate",
    "mcpi_coordinator.run.checkpoint",
    "mcpi_coordinator.launch.local",  # launch.early, stdlib only, starts an estimate's workers
    "mcpi_coordinator.launch.remote",
    "mcpi_coordinator.launch.transport",
    "mcpi_coordinator.launch.capacity",
    "mcpi_coordinator.cli.estimate",
    "importlib.metadata",
)
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("MCPI_")}


def imported_by(args: list[str], env: Mapping[str, str] | None = None) -> tuple[int, set[str]]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mcpi_coordinator", *args],
        capture_output=True, text=True, timeout=120, env={**CLEAN_ENV, **(env or {})}, check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    modules = {
        line.rpartition("|")[2].strip() for line in done.stderr.splitlines() if line.startswith("import time:")
    }
    return done.returncode, modules


def heavy_among(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--help"], 0),
        (["--version"], 0),
        (["estimate", "--help"], 0),
        (["estimate", "--version"], 0),
        (["estimate", "--points", "1e30"], 2),
        (["estimate", "--kernel", "nump"], 2),
        (["estimate", "--pionts", "5"], 2),
        (["estimat"], 2),
        (["combine", "--help"], 0),
        (["scatter", "--frames", "0"], 2),
        (["completion", "--help"], 0),
    ],
)
def test_answers_without_running_import_nothing_heavy(args: list[str], code: int) -> None:
    returncode, modules = imported_by(args)
    assert returncode == code
    assert "mcpi_coordinator.cli.main" in modules  # the list is real
    assert heavy_among(modules) == []


@pytest.mark.parametrize("line", ["mcpi estimate --poi", "mcpi est", "mcpi estimate --kernel ", "mcpi scatter -"])
def test_a_tab_completion_imports_nothing_heavy(line: str, tmp_path: Path) -> None:
    out = tmp_path / "completions"
    env = {"_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "_ARGCOMPLETE_STDOUT_FILENAME": str(out)}  # fmt: skip
    _, modules = imported_by([], env)
    assert out.read_text().strip(), "no completion was offered"
    assert heavy_among(modules) == []


def test_the_parsers_facts_are_their_owners() -> None:
    """``cli.facts`` copies values so that parsing imports none of their owners: each
    copy must stay what its owner says."""
    from mcpi_coordinator.launch import remote
    from mcpi_coordinator.pool.worker_pool import DEFAULT_PIPELINE_DEPTH
    from mcpi_coordinator.run.estimate import DEFAULT_CHUNK_SIZE, DEFAULT_POINTS
    from mcpi_worker.kernels import DEFAULT_KERNEL, KERNELS

    assert (facts.DEFAULT_POINTS, facts.DEFAULT_CHUNK_SIZE) == (DEFAULT_POINTS, DEFAULT_CHUNK_SIZE)
    assert (tuple(KERNELS), DEFAULT_KERNEL) == (facts.KERNEL_NAMES, facts.DEFAULT_KERNEL)
    assert facts.DEFAULT_PIPELINE_DEPTH == DEFAULT_PIPELINE_DEPTH
    assert facts.MAX_WORKERS_PER_HOST == remote.MAX_WORKERS_PER_HOST
    assert facts.SPEC_SYNTAX == remote.SPEC_SYNTAX
    assert facts.DEFAULT_REMOTE_COMMAND == remote.DEFAULT_REMOTE_COMMAND


def test_the_protocol_s_max_points_has_one_home() -> None:
    """The parsers' bound on ``--chunk-size`` is the protocol's own constant, imported from
    its one home (``mcpi_worker.constants``, which imports nothing), not a copy of it."""
    from mcpi_worker import constants, protocol
    from mcpi_worker.protocol import messages

    assert facts.MAX_POINTS is constants.MAX_POINTS  # the same object: imported, not written again
    assert protocol.MAX_POINTS is messages.MAX_POINTS is constants.MAX_POINTS
    assert "MAX_POINTS" not in _assigned_names(facts.__file__)
    assert "MAX_POINTS" not in _assigned_names(messages.__file__)


def _assigned_names(path: str) -> set[str]:
    """The names a module's own top-level statements assign (not those it imports)."""
    import ast

    tree = ast.parse(Path(path).read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(target.id for target in targets if isinstance(target, ast.Name))
    return names


def test_a_stub_says_what_the_command_says() -> None:
    """``mcpi --help`` lists stubs; ``mcpi estimate ...`` builds estimate in full: the
    same commands in the same order with the same summaries either way."""
    full = build_parser().format_help()
    assert build_parser(["--help"]).format_help() == full
    for name in COMMANDS:
        assert build_parser([name]).format_help() == full


TINY_RUN_UNUSED = (
    "structlog",  # imported by the first log line written, and a plain run at the default level writes none
    "asyncio",  # structlog.stdlib's
    "decimal",  # a count written 1e6 or 1_000: plain digits are read without it
    "difflib",  # the suggestion for a mistyped option
    "mcpi_coordinator.launch.slurm",  # --slurm
    "rich",  # structlog's pretty tracebacks, and the progress bar, which a --json run to a pipe does not draw
    "pygments",
    "importlib.metadata",  # numba's version, for the cache marker: read from its dist-info's name
    "email",
    "matplotlib",
    "mcpi_coordinator.cli.plots",
    "numpy",  # mcpi_worker.kernels' package import, for the numba cache's marker: mcpi_worker.numba_marker
    "mcpi_worker.kernels",
    "mcpi_worker.protocol.worker_end",  # the worker's end of a connection: mcpi_worker.protocol gives it lazily
)
"""What a small ``mcpi estimate`` once loaded without using it (issues 22 and 18)."""


PLAIN_RUN_UNUSED = (
    "sqlite3",  # --checkpoint and --resume
    "mcpi_coordinator.run.checkpoint",
    "mcpi_coordinator.run.verify",  # --verify
    "mcpi_coordinator.run.parts",  # --part (and mcpi combine)
)
"""What only an option loads: a run without it does not (a plain run's start-up is its
workers' wait for the handshake)."""


def loaded_by_estimate(*args: str) -> set[str]:
    """The modules loaded by ``mcpi estimate -n 1000 -s 3 -w 1 --json ARGS`` (stdout and
    stderr pipes: no progress bar), listed in the command's own exit handlers, which
    ``cli.boot`` runs before it leaves; a module whose import failed on purpose (None) is
    not loaded."""
    script = (
        "import atexit, json, sys\n"
        "atexit.register(lambda: print('MODULES', json.dumps(sorted(m for m, v in sys.modules.items()"
        " if v is not None)), file=sys.stderr))\n"
        f"sys.argv = ['mcpi', 'estimate', '-n', '1000', '-s', '3', '-w', '1', '--json', *{list(args)!r}]\n"
        "from mcpi_coordinator.cli.boot import main\n"
        "sys.exit(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
        env=CLEAN_ENV,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # the output was flushed before the command left
    assert (result["points"], result["inside"]) == (1000, 780)  # the same count, with or without the options
    (listing,) = [line for line in done.stderr.splitlines() if line.startswith("MODULES ")]
    modules = set(json.loads(listing.removeprefix("MODULES ")))
    assert "mcpi_coordinator.run.estimate" in modules  # the list is real
    return modules


def among(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == u or m.startswith(u + ".") for u in names))


def test_a_small_run_loads_nothing_it_does_not_use() -> None:
    assert among(loaded_by_estimate(), TINY_RUN_UNUSED + PLAIN_RUN_UNUSED) == []


def test_an_option_loads_what_it_uses(tmp_path: Path) -> None:
    """The other side of the plain run: the modules it leaves out are loaded, and do
    their work, when their option is given."""
    modules = loaded_by_estimate("--checkpoint", str(tmp_path / "run.db"), "--verify", "1", "--part", "1/1")
    assert set(PLAIN_RUN_UNUSED) <= modules
    assert (tmp_path / "run.db").stat().st_size > 0


WRAPPER = """
import os, sys
sys.stderr.write('{"event": "test_warning", "level": "warning", "said": "x"}\\n')
sys.stderr.flush()
os.execv(sys.executable, [sys.executable, "-P", "-m", "mcpi_worker"])
"""


def test_a_relayed_warning_is_the_line_that_loads_structlog(tmp_path: Path) -> None:
    """At the default level a run loads structlog only for a line it writes: here a
    worker's warning, relayed as ever (its event named as the worker's, at warning, its
    fields kept). ``-X importtime`` writes each import's line on stderr as it ends, in
    order with the log lines: structlog's comes after the run's modules and just before
    the warning, not with the command's imports."""
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mcpi_coordinator", "estimate", "-n", "1000", "-w", "1", "-s", "3",
         "--json", "--worker-cmd", f"{sys.executable} {wrapper}"],
        capture_output=True, text=True, timeout=120, env=CLEAN_ENV, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["inside"] == 780
    lines = done.stderr.splitlines()
    imported = [line.rpartition("|")[2].strip() if line.startswith("import time:") else None for line in lines]
    (relayed,) = [i for i, line in enumerate(lines) if "worker 0: test_warning" in line]
    assert "[warning" in lines[relayed] and "fields={'said': 'x'}" in lines[relayed] and "worker=0" in lines[relayed]
    assert imported.index("mcpi_coordinator.run.estimate") < imported.index("structlog") < relayed
    assert [line for line in lines if not line.startswith("import time:")] == [lines[relayed]]


AT_EXIT = """
import atexit, json, os, sys

def _write() -> None:
    path = os.path.join(os.environ["MODULES_AT_EXIT_DIR"], f"{os.getpid()}.json")
    with open(path + ".part", "w", encoding="utf-8") as out:
        json.dump({"argv": sys.argv, "modules": sorted(m for m, v in sys.modules.items() if v is not None)}, out)
    os.replace(path + ".part", path)  # whole or absent: a process may outlive the run

atexit.register(_write)
"""
"""A ``sitecustomize`` for every process of a run (the command and the workers it starts
inherit its environment): each writes its arguments and modules as it leaves (both
run their exit handlers before ``os._exit``)."""


@pytest.mark.parametrize(("level", "structlog_loaded"), [(None, False), ("info", True)])
def test_a_plain_run_loads_structlog_in_no_process(level: str | None, structlog_loaded: bool, tmp_path: Path) -> None:
    """At the default level neither the command nor its workers write a log line, so
    none loads structlog: the workers are told to write nothing below warning
    (``--log-level warning``), which the command would not show. At ``info`` both do, the
    workers' lines being shown."""
    hook, out = tmp_path / "hook", tmp_path / "out"
    hook.mkdir()
    out.mkdir()
    (hook / "sitecustomize.py").write_text(AT_EXIT, encoding="utf-8")
    env = {**CLEAN_ENV, "PYTHONPATH": str(hook), "MODULES_AT_EXIT_DIR": str(out)}
    args = ["estimate", "-n", "2e4", "--chunk-size", "1e4", "-w", "2", "-s", "3", "--json"]
    done = subprocess.run(
        [sys.executable, "-m", "mcpi_coordinator", *args, *(["--log-level", level] if level else [])],
        capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["points"] == 20_000
    # With numba's cache cold, mcpi estimate also starts the cache-warming process
    # (kernels/warm.py), which writes no log line and may still be running: not judged.
    reports = [json.loads(path.read_text(encoding="utf-8")) for path in out.glob("*.json")]
    reports = [r for r in reports if not r["argv"][0].endswith(os.path.join("kernels", "warm.py"))]
    workers = [r for r in reports if "mcpi_worker.server" in r["modules"]]
    (command,) = [r for r in reports if "mcpi_coordinator.run.estimate" in r["modules"]]
    assert len(workers) == 2 and len(reports) == 3, [r["argv"] for r in reports]
    for report in [command, *workers]:
        assert ("structlog" in report["modules"]) is structlog_loaded, report["argv"]
    assert all((r["argv"][1:] == ["--log-level", "warning"]) is (level is None) for r in workers)
    assert ("worker 0: worker_started" in done.stderr) is structlog_loaded


COLLECTIONS = """
import atexit, gc, json, os, sys

_during_imports = []

def _seen(phase, info):
    # From the command's own code (cli.main, imported by boot.main) until cli.estimate has
    # run to its end (its ``run`` defined): the command importing what it runs.
    estimate = sys.modules.get("mcpi_coordinator.cli.estimate")
    if phase == "start" and "mcpi_coordinator.cli.main" in sys.modules and not hasattr(estimate, "run"):
        _during_imports.append(info["generation"])

gc.callbacks.append(_seen)

def _write() -> None:
    path = os.path.join(os.environ["COLLECTIONS_DIR"], f"{os.getpid()}.json")
    with open(path, "w", encoding="utf-8") as out:
        json.dump({"argv": sys.argv, "during_imports": _during_imports, "enabled": gc.isenabled()}, out)

atexit.register(_write)
"""
"""A ``sitecustomize`` that notes each cyclic collection made while the command imports
what it runs, and whether the collector is on as the process leaves."""


def test_no_garbage_collection_runs_while_a_run_imports_what_it_runs(tmp_path: Path) -> None:
    """Issue 22: the command's imports (Trio and attrs' generated methods, our dataclasses)
    allocate objects that live as long as the process, and every 700 of them set off a
    collection that found next to nothing (a profile of the command's start: several ms
    of its CPU in the collector). The collector is off from ``boot.main`` until
    ``cli.estimate`` is imported, and on again for the run."""
    hook, out = tmp_path / "hook", tmp_path / "out"
    hook.mkdir()
    out.mkdir()
    (hook / "sitecustomize.py").write_text(COLLECTIONS, encoding="utf-8")
    env = {**CLEAN_ENV, "PYTHONPATH": str(hook), "COLLECTIONS_DIR": str(out)}
    done = subprocess.run(
        [sys.executable, "-m", "mcpi_coordinator", "estimate", "-n", "1000", "-s", "3", "--json"],
        capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    reports = [json.loads(path.read_text(encoding="utf-8")) for path in out.glob("*.json")]
    (command,) = [r for r in reports if "mcpi_coordinator" in r["argv"][0]]
    assert command["during_imports"] == []
    assert command["enabled"] is True
