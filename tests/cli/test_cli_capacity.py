"""The cap on ``--workers`` counts each local worker for the kernel that will run
(issue 23, finding 5): the default kernel when ``--kernel`` is not given, a resumed
checkpoint's kernel when it is resumed. The machine's limits are injected."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from mcpi_coordinator.cli import estimate, estimate_plan
from mcpi_coordinator.cli.main import build_parser
from mcpi_coordinator.launch.capacity import MachineLimits, worker_memory
from mcpi_worker.kernels import DEFAULT_KERNEL

MiB = 2**20
MACHINE = MachineLimits(10**6, 10**6, 24 * 1024 * MiB)
"""Descriptors to spare; 24 GiB of memory available, so memory is the binding cap."""
DEFAULT_CAP = MACHINE.memory_available // worker_memory(DEFAULT_KERNEL)  # type: ignore[operator]
PYTHON_CAP = MACHINE.memory_available // worker_memory("python")  # type: ignore[operator]


def parsed(*argv: str) -> argparse.Namespace:
    args, extras = build_parser().parse_known_args(["estimate", *argv])
    assert not extras
    return args


def refusal(args: argparse.Namespace, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        estimate.run(args, machine=MACHINE)
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_without_kernel_workers_are_counted_for_the_default_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    each = f"at {worker_memory(DEFAULT_KERNEL) / MiB:.0f} MiB each"
    # --points 1e13: chunks for every worker (workers a run cannot use are not started,
    # and so not counted against the machine).
    err = refusal(parsed("--workers", str(DEFAULT_CAP + 1), "--points", "1e13"), capsys)
    assert f"--workers {DEFAULT_CAP + 1:,} is more than this machine can hold: at most {DEFAULT_CAP:,}" in err
    assert each in err
    # The same as with the kernel named: the default is the kernel that runs.
    assert each in refusal(
        parsed("--workers", str(DEFAULT_CAP + 1), "--kernel", DEFAULT_KERNEL, "--points", "1e13"), capsys
    )
    err = refusal(parsed("--workers", str(PYTHON_CAP + 1), "--kernel", "python", "--points", "1e13"), capsys)
    assert f"at most {PYTHON_CAP:,} local workers" in err and f"at {worker_memory('python') / MiB:.0f} MiB" in err


def test_a_resumed_run_is_counted_for_its_checkpoints_kernel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "run.db"
    made = subprocess.run(
        [sys.executable, "-m", "mcpi_coordinator", "estimate", "--points", "20000", "--kernel", "python",
         "--chunk-size", "10", "--workers", "1", "--seed", "3", "--checkpoint", str(saved)],
        capture_output=True, text=True, timeout=120, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    # python workers are small: more of them than of the default kernel's fit.
    if PYTHON_CAP > DEFAULT_CAP:
        args = parsed("--resume", str(saved), "--workers", str(DEFAULT_CAP + 1), "--json")
        assert estimate.run(args, machine=MACHINE) == 0  # finished: no worker started
        assert '"kernel": "python"' in capsys.readouterr().out
    err = refusal(parsed("--resume", str(saved), "--workers", str(PYTHON_CAP + 1)), capsys)
    assert f"at most {PYTHON_CAP:,} local workers" in err
    # The refused run left its checkpoint closed and unlocked: it resumes at once.
    assert estimate.run(parsed("--resume", str(saved), "--workers", "1", "--json"), machine=MACHINE) == 0


def test_a_worker_command_of_unknown_memory_is_capped_by_descriptors_alone() -> None:
    """A ``--worker-cmd`` runs some other program (a ``kubectl exec`` or ``ssh`` client, a
    fake worker): counting each as an mcpi-worker compiling numba's loops refused 300
    small clients on a machine of 24 GiB. The descriptors each costs the coordinator
    are known, and still cap them."""
    many = "1000"  # above DEFAULT_CAP, with or without numba
    command = f"{sys.executable} -m mcpi_coordinator.testing.fake_worker"
    own = parsed("--workers", many, "--points", "1e13")
    assert "MiB each" in str(estimate_plan.check_arguments(own, MACHINE))
    assert (
        estimate_plan.check_arguments(parsed("--workers", many, "--points", "1e13", "--worker-cmd", command), MACHINE)
        is None
    )
    few_files = MachineLimits(1000, 1000, MACHINE.memory_available)
    problem = estimate_plan.check_arguments(
        parsed("--workers", many, "--points", "1e13", "--worker-cmd", command), few_files
    )
    assert problem is not None and problem.startswith("--workers 1,000 is more than this machine can hold")
    assert "(the open-file limit of 1,000 (ulimit -Hn) holds" in problem and "MiB" not in problem


def test_the_refusal_names_the_workers_typed_when_fewer_have_chunks(capsys: pytest.CaptureFixture[str]) -> None:
    # 1e9 points in chunks of 1e7 are 100 chunks: --workers 1000 would start 100, and
    # the line said "--workers 100 is more than ...", a number nobody typed.
    few = MachineLimits(10**6, 10**6, 50 * worker_memory(DEFAULT_KERNEL))  # type: ignore[operator]
    problem = estimate_plan.check_arguments(parsed("--workers", "1000", "--points", "1e9"), few)
    assert problem is not None
    assert problem.startswith(
        "--workers 1,000 (100 of them with chunks to count) is more than this machine can hold: at most 50"
    ), problem
    problem = estimate_plan.check_arguments(parsed("--workers", "100", "--points", "1e9"), few)
    assert problem is not None and problem.startswith("--workers 100 is more than"), problem
