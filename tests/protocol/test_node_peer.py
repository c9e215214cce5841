"""A coordinator written from protocol.md alone, in JavaScript, drives our worker.

The peer is ``tests/protocol/peers/mcpi_coordinator.mjs`` (Node.js, its standard library
only: its own strict msgpack decoder and framing, the checks §5 and §6.1 ask of a
coordinator, and the golden frames and kernel table read from protocol.md itself). It
starts the worker once per scenario: versions 1 and 2, the golden kernel table, the
golden range, ping, cancel, a request before ``hello``, ``duplicate_id`` and ``busy``,
shutdown, end of input, a fatal frame; each answer, the bytes where protocol.md says they
are exact, and the exit status. It is a second outside view of the worker beside the C
peer's client (``test_c_peer.py``), by another hand and in another language.

The last tests show the peer is not a rubber stamp: against ``raw_worker.py`` faults it
names the rule each breaks.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from slurm import in_ci
from worker_process import RAW_WORKER, SPEC_WORKER, worker_command

TESTS = Path(__file__).resolve().parents[1]
PROTOCOL_MD = TESTS.parent / "protocol.md"
PEER = TESTS / "protocol" / "peers" / "mcpi_coordinator.mjs"
NODE = shutil.which("node")
TIMEOUT = 300  # seconds, for every scenario together; reached only by a hang
SCENARIOS = (
    "handshake_v2", "handshake_v1_plain_only", "golden_kernel_table", "golden_range",
    "golden_ping_pong_and_error_bytes", "cancel_running", "before_hello_then_hello", "duplicate_and_busy",
    "eof_cancels_and_exits_0", "fatal_text_instead_of_hello",
)  # fmt: skip

pytestmark = pytest.mark.slow


def node() -> str:
    """``node`` on PATH; a skip without it, and a failure under ``CI=true`` (``.ci/run``
    installs Debian's nodejs as root), so that a CI run never passes without the peer."""
    if NODE is None:
        reason = "needs Node.js (node) on PATH to run the JavaScript peer; .ci/run installs nodejs as root"
        if in_ci():
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    return NODE


def drive(worker: list[str], *only: str) -> tuple[int, list[str]]:
    """Run the peer against ``worker``: its exit status and its lines."""
    selection = ["--only", ",".join(only)] if only else []
    run = subprocess.run(
        [node(), str(PEER), str(PROTOCOL_MD), *selection, "--", *worker],
        capture_output=True, text=True, timeout=TIMEOUT, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert run.stderr == "", run.stderr
    return run.returncode, run.stdout.splitlines()


def test_the_javascript_coordinator_finds_the_real_worker_keeps_every_rule_it_checks() -> None:
    status, lines = drive(worker_command())
    assert [line.split()[1] for line in lines] == list(SCENARIOS), lines
    assert status == 0, "\n".join(lines)
    # mcpi-worker's messages are the golden ones (protocol.md §12): the bytes agree too.
    assert "ok golden_ping_pong_and_error_bytes (error bytes golden)" in lines


def test_the_javascript_coordinator_and_the_spec_worker_agree() -> None:
    """Two readings of protocol.md by two hands (Python, JavaScript) agree with each other."""
    status, lines = drive([sys.executable, SPEC_WORKER])
    assert status == 0, "\n".join(lines)


@pytest.mark.parametrize(
    ("fault", "only", "why"),
    [
        ("inside_exceeds", "golden_kernel_table", "FAIL golden_kernel_table: inside 1001 of 1000"),
        ("points_differ", "golden_kernel_table", "FAIL golden_kernel_table: points 1001 for a request of 1000"),
        ("version_not_offered", "handshake_v2", "FAIL handshake_v2: version 3 was not offered"),
        ("insides_on_plain", "golden_kernel_table", "FAIL golden_kernel_table: insides for a plain sample"),
        ("bool_inside", "golden_kernel_table", "FAIL golden_kernel_table: the worker broke the protocol: result: 'in"),
        ("duplicate_key", "golden_kernel_table", "FAIL golden_kernel_table: the worker broke the protocol: key"),
        ("before_welcome", "handshake_v2", "FAIL handshake_v2: first message"),
    ],
)
def test_the_javascript_coordinator_names_the_rule_a_hostile_worker_breaks(fault: str, only: str, why: str) -> None:
    status, lines = drive([sys.executable, RAW_WORKER, fault], only)
    assert status == 1
    assert len(lines) == 1 and lines[0].startswith(why), lines
