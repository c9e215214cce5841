"""The ``--slurm`` building blocks without a cluster: the job environment, CPU counts,
node lists (through a fake ``scontrol``) and the worker step's argument vector.

The same functions run inside real ``salloc`` and ``sbatch`` allocations in
``test_slurm.py``.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcpi_coordinator.errors import McpiError
from mcpi_coordinator.launch.slurm import (
    MAX_NODES,
    OUTSIDE_ALLOCATION,
    Allocation,
    SlurmError,
    SlurmNode,
    allocation_from_environment,
    allocation_nodes,
    expand_nodelist,
    parse_cpus_per_node,
    run_scontrol,
    srun_worker_argv,
)

JOB = {"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "node[1-3],gpu7", "SLURM_JOB_CPUS_PER_NODE": "2(x3),1"}


def fake_scontrol(names: Sequence[str]) -> tuple[list[list[str]], Callable[[Sequence[str]], str]]:
    calls: list[list[str]] = []

    def run(argv: Sequence[str]) -> str:
        calls.append(list(argv))
        return "".join(f"{name}\n" for name in names)

    return calls, run


# -- SLURM_JOB_CPUS_PER_NODE -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", (1,)),
        ("64", (64,)),
        ("2(x3),1", (2, 2, 2, 1)),
        ("4,4,8", (4, 4, 8)),
        ("1(x1)", (1,)),
        ("16(x2),8(x3),1", (16, 16, 8, 8, 8, 1)),
    ],
)
def test_cpus_per_node_expands_slurms_shorthand(text: str, expected: tuple[int, ...]) -> None:
    assert parse_cpus_per_node(text) == expected


def compress(counts: Sequence[int]) -> str:
    """Slurm's own writing of a per-node list: runs of equal counts as ``N(xM)``."""
    runs = [(count, len(list(group))) for count, group in itertools.groupby(counts)]
    return ",".join(str(count) if repeat == 1 else f"{count}(x{repeat})" for count, repeat in runs)


@given(st.lists(st.integers(min_value=1, max_value=512), min_size=1, max_size=50))
def test_cpus_per_node_reads_back_what_slurm_writes(counts: list[int]) -> None:
    assert parse_cpus_per_node(compress(counts)) == tuple(counts)


@pytest.mark.parametrize(
    "text",
    ["", "0", "-1", "2x3", "2(x0)", "2(3)", "2(x3", "(x3)", "2,,1", "2,", " 2", "2 ", "1.5", "a",
     "2(x3)(x2)", "01", "1234567", f"1(x{MAX_NODES}),1", "1(x999999)"],
)
def test_cpus_per_node_refuses_anything_else_in_one_line(text: str) -> None:
    with pytest.raises(SlurmError) as caught:
        parse_cpus_per_node(text)
    message = str(caught.value)
    assert "\n" not in message and "SLURM_JOB_CPUS_PER_NODE" in message and repr(text) in message


# -- the job environment ---------------------------------------------------------------


def test_outside_an_allocation_the_error_says_what_to_do() -> None:
    with pytest.raises(SlurmError) as caught:
        allocation_from_environment({"PATH": "/usr/bin", "SLURM_CONF": "/etc/slurm/slurm.conf"})
    assert str(caught.value) == OUTSIDE_ALLOCATION
    assert "SLURM_JOB_ID is not set" in OUTSIDE_ALLOCATION and "salloc" in OUTSIDE_ALLOCATION
    assert isinstance(caught.value, McpiError)  # printed as one "mcpi estimate: error:" line


def test_an_allocation_is_read_from_the_job_environment() -> None:
    assert allocation_from_environment({**JOB, "SLURM_JOB_NUM_NODES": "4"}) == Allocation(
        job_id="42", nodelist="node[1-3],gpu7", cpus_per_node=(2, 2, 2, 1)
    )


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"SLURM_JOB_ID": "abc"}, "not a Slurm job id"),
        ({"SLURM_JOB_ID": ""}, "not a Slurm job id"),
        ({"SLURM_JOB_NODELIST": None}, "SLURM_JOB_NODELIST is not"),
        ({"SLURM_JOB_NODELIST": ""}, "SLURM_JOB_NODELIST is not"),
        ({"SLURM_JOB_CPUS_PER_NODE": None}, "SLURM_JOB_CPUS_PER_NODE is not"),
        ({"SLURM_JOB_CPUS_PER_NODE": "2(x3"}, "not a CPU count per node"),
        ({"SLURM_JOB_NUM_NODES": "3"}, "names 4 nodes but SLURM_JOB_NUM_NODES='3'"),
    ],
)
def test_a_broken_job_environment_names_the_variable(change: dict[str, str | None], complaint: str) -> None:
    env = {**JOB, **change}
    with pytest.raises(SlurmError) as caught:
        allocation_from_environment({k: v for k, v in env.items() if v is not None})
    assert complaint in str(caught.value) and "\n" not in str(caught.value)


# -- node names ------------------------------------------------------------------------


def test_nodes_pair_scontrols_names_with_the_cpu_counts_in_order() -> None:
    calls, run = fake_scontrol(["node1", "node2", "node3", "gpu7"])
    nodes = allocation_nodes(JOB, run=run, scontrol="/opt/slurm/bin/scontrol")
    assert nodes == (
        SlurmNode("node1", 2), SlurmNode("node2", 2), SlurmNode("node3", 2), SlurmNode("gpu7", 1)
    )
    assert calls == [["/opt/slurm/bin/scontrol", "show", "hostnames", "--", "node[1-3],gpu7"]]


@pytest.mark.parametrize("nodelist", ["--help", "-Mother", "-v"])
def test_a_nodelist_that_looks_like_an_option_is_passed_after_a_double_dash(nodelist: str) -> None:
    """SLURM_JOB_NODELIST comes from the environment: never an option of scontrol's."""
    calls, run = fake_scontrol(["node1"])
    expand_nodelist(nodelist, run=run)
    assert calls == [["scontrol", "show", "hostnames", "--", nodelist]]


@pytest.mark.parametrize(
    ("names", "complaint"),
    [
        (["node1", "node2", "node3"], "names 3 nodes but SLURM_JOB_CPUS_PER_NODE gives CPUs for 4"),
        (["node1", "node2", "node3", "node1"], "names a node twice"),
        ([], "named no node"),
        (["node1", "-x", "node3", "gpu7"], "'-x', not a node name"),
        (["node1", "a;b", "node3", "gpu7"], "'a;b', not a node name"),
    ],
)
def test_node_lists_that_do_not_fit_are_refused(names: list[str], complaint: str) -> None:
    _, run = fake_scontrol(names)
    with pytest.raises(SlurmError) as caught:
        allocation_nodes(JOB, run=run)
    assert complaint in str(caught.value)


def test_outside_an_allocation_scontrol_is_never_run() -> None:
    calls, run = fake_scontrol(["node1"])
    with pytest.raises(SlurmError):
        allocation_nodes({}, run=run)
    assert calls == []


def test_run_scontrol_reports_a_missing_program_and_a_failure_in_one_line() -> None:
    with pytest.raises(SlurmError, match=r"^/nonexistent/scontrol not found: .* on PATH"):
        run_scontrol(["/nonexistent/scontrol", "show", "hostnames", "x"])
    script = (
        "import sys; print('first', file=sys.stderr); "
        "print('scontrol: error: bad list', file=sys.stderr); sys.exit(1)"
    )
    failing = [sys.executable, "-c", script]
    with pytest.raises(SlurmError, match=r"failed: scontrol: error: bad list$"):
        run_scontrol(failing)
    assert run_scontrol([sys.executable, "-c", "print('a'); print('b')"]) == "a\nb\n"


def test_expand_nodelist_uses_the_real_program_it_is_given() -> None:
    # A stand-in "scontrol" that prints its last argument split at commas.
    program = [sys.executable, "-c", "import sys; print('\\n'.join(sys.argv[-1].split(',')))"]
    names = expand_nodelist("a,b,c", run=lambda argv: run_scontrol([*program, *argv[1:]]))
    assert names == ("a", "b", "c")


# -- the worker step -------------------------------------------------------------------


def test_the_worker_step_is_one_unbuffered_task_on_its_node_with_its_cpus() -> None:
    worker = ["/opt/mcpi/bin/mcpi-worker", "--jobs", "8"]
    argv = srun_worker_argv(SlurmNode("node3", 8), worker, srun="/usr/bin/srun")
    assert argv[0] == "/usr/bin/srun" and argv[-3:] == worker
    flags = argv[1:-3]
    assert {"-N1", "-n1", "--nodelist=node3", "--cpus-per-task=8"} <= set(flags)
    assert {"-u", "--quiet", "--immediate", "--overlap"} <= set(flags)
    assert "--pty" not in flags and "--exact" not in flags
    assert all(flag.startswith("-") for flag in flags)  # the worker is the first non-option


def test_the_worker_step_refuses_an_empty_command_or_no_cpus() -> None:
    with pytest.raises(ValueError, match="empty"):
        srun_worker_argv(SlurmNode("n", 1), [])
    with pytest.raises(ValueError, match="0 CPUs"):
        srun_worker_argv(SlurmNode("n", 0), ["mcpi-worker"])
