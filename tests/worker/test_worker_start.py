"""What a worker does before it serves: the start that two workers pay on two cores while
their coordinator starts too (issue 18, ``benchmarks/sched_timeline.py``).

A real ``mcpi-worker`` runs with a ``sitecustomize`` that notes each cyclic collection made
while its main thread is in ``boot.main`` before it prepares its kernels, whether the
collector is on when it does, and which modules it had imported when it left.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from worker_process import WorkerUnderTest

from mcpi_worker import main

HOOK = """
import atexit, gc, json, os, sys, threading

_main = threading.main_thread().ident
_starting = []
_collector_on_at_kernels = []

def _main_thread_in() -> set:
    where = set()
    frame = sys._current_frames().get(_main)
    while frame is not None:
        where.add((os.path.basename(frame.f_code.co_filename), frame.f_code.co_name))
        frame = frame.f_back
    return where

def _seen(phase, info):
    if phase == "start" and not _collector_on_at_kernels and ("boot.py", "main") in _main_thread_in():
        _starting.append(info["generation"])  # the worker's start, as boot.main runs it

def _kernels_prepared(frame, event, arg):
    if event == "call" and frame.f_code.co_name == "prepare_kernels":
        _collector_on_at_kernels.append(gc.isenabled())
        sys.setprofile(None)

gc.callbacks.append(_seen)
sys.setprofile(_kernels_prepared)  # the main thread's calls, until its kernels are prepared

def _write() -> None:
    path = os.path.join(os.environ["HOOK_DIR"], f"{os.getpid()}.json")
    with open(path, "w", encoding="utf-8") as out:
        json.dump({"starting": _starting, "collector_on_at_kernels": _collector_on_at_kernels,
                   "enabled": gc.isenabled(), "modules": sorted(sys.modules)}, out)

atexit.register(_write)
"""


def started_worker(tmp_path: Path, *arguments: str, **environ: str) -> dict[str, Any]:
    """A real worker started with ``HOOK``, its input ended at once (it starts, serves,
    sees the end and leaves in order): what the hook noted."""
    hook, out = tmp_path / "hook", tmp_path / "out"
    hook.mkdir()
    out.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(hook), "HOOK_DIR": str(out), **environ}
    done = subprocess.run(
        [sys.executable, "-P", "-m", "mcpi_worker", *arguments],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (report,) = [json.loads(path.read_text(encoding="utf-8")) for path in out.glob("*.json")]
    return report


@pytest.mark.parametrize("level", ["info", "warning"])
def test_no_garbage_collection_runs_while_a_worker_starts(tmp_path: Path, level: str) -> None:
    """Its imports (the protocol's dataclasses, the kernels, structlog at ``info``) allocate
    objects that live as long as the process, and every 700 of them set off a collection
    that found next to nothing. The collector is off from ``boot.main`` until the worker
    prepares its kernels, and on again from then."""
    report = started_worker(tmp_path, "--log-level", level)
    assert report["starting"] == []
    assert report["collector_on_at_kernels"] == [True]
    assert report["enabled"] is True


def test_the_collector_is_on_while_a_worker_loads_or_compiles_its_kernels(tmp_path: Path) -> None:
    """Under ``MCPI_NUMPY_IMPL=fused`` numba loads (or, into an empty cache, compiles for
    seconds) as the kernels are prepared, making cyclic garbage. With the collector held
    off until the worker served, that garbage piled up and the release (``gc.freeze``)
    kept it for good: such a worker grew past what the ``--workers`` cap counts it for
    (``tests/launch/test_fleet.py``). The hold ends with the imports."""
    report = started_worker(tmp_path, "--log-level", "warning", MCPI_NUMPY_IMPL="fused")
    assert report["collector_on_at_kernels"] == [True]


@pytest.mark.parametrize(
    "module",
    [
        "mcpi_worker.protocol.coordinator_end",  # mcpi_worker.protocol gives its names lazily
        "shutil",  # argparse's formatter, for its width (main._Formatter)
        "socket",  # for the host's name (os.uname)
    ],
)
def test_a_worker_started_as_mcpi_starts_it_does_not_import(tmp_path: Path, module: str) -> None:
    """What a worker never uses, or gets as well without, is not imported before it serves:
    each was part of every worker's start (at ``--log-level warning``, as ``mcpi estimate``
    starts its local workers: structlog, loaded at ``info``, imports some of them)."""
    report = started_worker(tmp_path, "--log-level", "warning")
    assert "mcpi_worker.protocol.worker_end" in report["modules"]
    assert module not in report["modules"]


def test_the_host_a_worker_names_is_the_host_name() -> None:
    """A real worker's welcome names ``os.uname().nodename``: what ``socket.gethostname()``
    gives."""
    worker = WorkerUnderTest()
    try:
        welcome = worker.handshake()
    finally:
        worker.close_stdin()
        assert worker.wait() == 0
    assert welcome.host == socket.gethostname()


@pytest.mark.parametrize("columns", [None, "40", "123", "0", "-3", "wide"])
def test_the_worker_s_help_is_as_wide_as_argparse_makes_it(
    monkeypatch: pytest.MonkeyPatch, columns: str | None
) -> None:
    """``main._Formatter`` works out the width as argparse's own (``shutil.get_terminal_size``)."""
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    ours = main.build_parser()
    theirs = main.build_parser()
    theirs.formatter_class = argparse.HelpFormatter
    assert ours.format_help() == theirs.format_help()
