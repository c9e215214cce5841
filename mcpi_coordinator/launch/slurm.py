"""Slurm: the allocation mcpi runs in, and the ``srun`` step that starts a worker on a node.

The building blocks of ``mcpi estimate --slurm``: inside an allocation (``salloc``,
``sbatch``) the coordinator starts one step per node, each running one worker that
uses all of that node's CPUs in the allocation. What each piece settles:

- ``allocation_from_environment``: are we inside an allocation at all (``SLURM_JOB_ID``
  and friends, as Slurm sets them for the job's script or shell), and which CPUs it
  holds per node (``SLURM_JOB_CPUS_PER_NODE``, in Slurm's ``2(x3),1`` shorthand).
- ``expand_nodelist``: the node names, in Slurm's own order, from its compressed
  ``node[01-03,07]`` form. Only ``scontrol show hostnames`` knows every rule of that
  syntax (and a site's plugins), so it is asked rather than imitated.
- ``srun_worker_argv``: the argument vector of one worker step. Every flag in it is
  there because of a failure measured without it (``../shared/slurm-notes.md``).

Pure functions and frozen values: the one external call, ``scontrol``, goes through a
``run`` parameter, so tests pass a fake instead of patching anything.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from mcpi_coordinator.errors import McpiError
from mcpi_worker.quoting import quoted

JOB_ID: Final = "SLURM_JOB_ID"
NODELIST: Final = "SLURM_JOB_NODELIST"
CPUS_PER_NODE: Final = "SLURM_JOB_CPUS_PER_NODE"
NUM_NODES: Final = "SLURM_JOB_NUM_NODES"

MAX_NODES: Final = 100_000
"""Far beyond any allocation (the largest machines have ~10^4 nodes), but it keeps a
corrupt ``1(x99999999999)`` from expanding into a list that fills the memory."""

SCONTROL_TIMEOUT_S: Final = 30.0
"""``scontrol show hostnames`` expands locally and returns in milliseconds; the bound is
only there so a broken installation fails instead of hanging the start."""

_CPUS_ITEM: Final = re.compile(r"([1-9][0-9]{0,5})(?:\(x([1-9][0-9]{0,5})\))?")
_JOB_ID: Final = re.compile(r"[1-9][0-9]{0,9}")
_NODE_NAME: Final = re.compile(r"[A-Za-z0-9._-]+")

OUTSIDE_ALLOCATION: Final = (
    "--slurm needs a Slurm allocation, but SLURM_JOB_ID is not set: run mcpi inside one, "
    "e.g. salloc -N2 mcpi estimate --slurm, or from an sbatch script"
)


class SlurmError(McpiError):
    """Not inside an allocation, or the allocation or Slurm's tools are unusable.
    ``str()`` is one line that says which and what to do."""


@dataclass(frozen=True)
class SlurmNode:
    """One node of the allocation and the CPUs the allocation holds on it."""

    name: str
    cpus: int


@dataclass(frozen=True)
class Allocation:
    """What Slurm tells a job's processes about their allocation."""

    job_id: str
    nodelist: str
    """Compressed, as Slurm writes it: ``node[01-03],gpu7``."""
    cpus_per_node: tuple[int, ...]
    """One entry per node, in the nodelist's order."""


def parse_cpus_per_node(text: str) -> tuple[int, ...]:
    """``SLURM_JOB_CPUS_PER_NODE`` expanded: ``"2(x3),1"`` → ``(2, 2, 2, 1)``.

    Slurm writes runs of nodes with equal counts as ``COUNT(xREPEAT)``. Raises
    ``SlurmError`` naming the value for anything else.
    """

    def invalid(reason: str) -> SlurmError:
        return SlurmError(f"{CPUS_PER_NODE}={quoted(text)} is not a CPU count per node ({reason}); "
                          "expected a list like 2(x3),1")

    if not text:
        raise invalid("it is empty")
    counts: list[int] = []
    for item in text.split(","):
        match = _CPUS_ITEM.fullmatch(item)
        if match is None:
            raise invalid(f"{quoted(item)} is neither N nor N(xM) with positive N and M")
        count, repeat = int(match[1]), int(match[2] or 1)
        if len(counts) + repeat > MAX_NODES:
            raise invalid(f"more than {MAX_NODES} nodes")
        counts.extend([count] * repeat)
    return tuple(counts)


def allocation_from_environment(env: Mapping[str, str]) -> Allocation:
    """The allocation described by ``env`` (pass ``os.environ``), checked in full.

    Raises ``SlurmError`` with one line: outside an allocation, ``OUTSIDE_ALLOCATION``;
    inside a broken one, which variable is wrong.
    """
    job_id = env.get(JOB_ID)
    if job_id is None:
        raise SlurmError(OUTSIDE_ALLOCATION)
    if not _JOB_ID.fullmatch(job_id):
        raise SlurmError(f"{JOB_ID}={quoted(job_id)} is not a Slurm job id")
    nodelist = env.get(NODELIST)
    if not nodelist:
        raise SlurmError(f"{JOB_ID} is set but {NODELIST} is not: not the environment salloc, "
                         "sbatch or srun give a job")
    cpus_text = env.get(CPUS_PER_NODE)
    if cpus_text is None:
        raise SlurmError(f"{JOB_ID} is set but {CPUS_PER_NODE} is not")
    cpus = parse_cpus_per_node(cpus_text)
    num_nodes = env.get(NUM_NODES)
    if num_nodes is not None and num_nodes != str(len(cpus)):
        raise SlurmError(f"{CPUS_PER_NODE}={quoted(cpus_text)} names {len(cpus)} nodes "
                         f"but {NUM_NODES}={quoted(num_nodes)}")
    return Allocation(job_id=job_id, nodelist=nodelist, cpus_per_node=cpus)


def run_scontrol(argv: Sequence[str]) -> str:
    """Run ``argv`` (``scontrol ...``) and return its stdout; ``SlurmError`` if it fails."""
    try:
        done = subprocess.run(list(argv), check=False, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=SCONTROL_TIMEOUT_S)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]} not found: Slurm's client tools must be on PATH for --slurm") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{argv[0]} gave no answer within {SCONTROL_TIMEOUT_S:g} s") from None
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        raise SlurmError(f"{' '.join(argv)} failed: {reason[0]}")
    return done.stdout


def expand_nodelist(
    nodelist: str, *, run: Callable[[Sequence[str]], str] = run_scontrol, scontrol: str = "scontrol"
) -> tuple[str, ...]:
    """The node names of a compressed nodelist, in Slurm's order, one per node."""
    # After "--": a nodelist comes from the environment, and one starting with "-"
    # ("-M other-cluster", "--help") must stay a nodelist, never an option of scontrol's.
    names = tuple(run([scontrol, "show", "hostnames", "--", nodelist]).split())
    if not names:
        raise SlurmError(f"scontrol show hostnames {quoted(nodelist)} named no node")
    for name in names:
        # Each becomes a --nodelist= value; refuse what srun would read otherwise.
        if not _NODE_NAME.fullmatch(name) or name.startswith("-"):
            raise SlurmError(f"scontrol show hostnames {quoted(nodelist)} gave {quoted(name)}, not a node name")
    return names


def allocation_nodes(
    env: Mapping[str, str], *, run: Callable[[Sequence[str]], str] = run_scontrol, scontrol: str = "scontrol"
) -> tuple[SlurmNode, ...]:
    """Every node of the allocation ``env`` describes, with its CPUs.

    Raises ``SlurmError`` outside an allocation, or when the node names and the CPU
    counts do not pair up.
    """
    allocation = allocation_from_environment(env)
    names = expand_nodelist(allocation.nodelist, run=run, scontrol=scontrol)
    if len(names) != len(allocation.cpus_per_node):
        raise SlurmError(f"{NODELIST}={quoted(allocation.nodelist)} names {len(names)} nodes but "
                         f"{CPUS_PER_NODE} gives CPUs for {len(allocation.cpus_per_node)}")
    if len(set(names)) != len(names):
        raise SlurmError(f"{NODELIST}={quoted(allocation.nodelist)} names a node twice")
    return tuple(SlurmNode(name, cpus) for name, cpus in zip(names, allocation.cpus_per_node, strict=True))


def srun_worker_argv(node: SlurmNode, worker: Sequence[str], *, srun: str = "srun") -> list[str]:
    """The argument vector that runs ``worker`` as one step on ``node``, with its CPUs.

    ``worker`` is the worker's own argument vector; for a multi-core worker it should
    ask for ``node.cpus`` jobs (``[..., "mcpi-worker", "--jobs", str(node.cpus)]``).
    Why each flag (measured on Slurm 22.05; ../shared/slurm-notes.md):

    - ``-N1 -n1``: one task, whatever the allocation's ``SLURM_NTASKS``, which srun
      inherits; two tasks would be two workers on one stdio stream.
    - ``-u``: without it slurmstepd holds stdout back until a newline, and a binary
      frame without a 0x0a byte never arrives (the handshake times out).
    - ``--quiet``: keeps srun's "queued/allocated" chatter out of the worker's stderr.
    - ``--immediate``: a step that cannot start fails in about a second instead of
      waiting, so the pool sees a failure it can act on, never a silent queue.
    - ``--overlap``, not ``--exact``: the step shares the allocation's CPUs with other
      steps. With ``--exact`` a step asking for all of a node's CPUs is refused
      ("Requested nodes are busy") when mcpi itself runs inside a step (``srun mcpi``,
      or a site's ``use_interactive_step`` salloc shell), and a replacement worker is
      refused while the step it replaces is still ending.
    - ``-c CPUS``: the step's CPU share, so task binding (where a site enables it)
      and ``SLURM_CPUS_PER_TASK`` tell the worker how many cores it has.
    """
    if node.cpus < 1:
        raise ValueError(f"node {node.name} has {node.cpus} CPUs")
    if not worker:
        raise ValueError("the worker command is empty")
    return [
        srun, "-N1", "-n1", f"--nodelist={node.name}", "--quiet", "-u", "--immediate", "--overlap",
        f"--cpus-per-task={node.cpus}", *worker,
    ]
