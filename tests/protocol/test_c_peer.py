"""A peer written from protocol.md alone, in C, against our implementation: both roles,
protocol versions 1 and 2.

- As a **client** it drives the real ``mcpi-worker``: the handshake, samples of both
  kernels checked against its own kernels, ranges, pipelining, pings while a sample runs,
  ``duplicate_id``, ``busy``, cancel, shutdown and end of file, and one malformed frame
  per fatal rule of §2–§3 (each answered by one ``error`` with a nil id, nothing after
  it, exit 3).
- As a **worker** it is driven by the real ``mcpi estimate --worker-cmd``: the counts are
  the real workers' own, bit for bit, for both kernels, over ranges (version 2) and over
  one stream a request (version 1).

The peer is ``tests/protocol/peers/mcpi_peer.c`` (no msgpack library: its strict decoder
is part of what is tested); ``tests/c_peer.py`` builds it.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from command_line import PATIENT, mcpi_clean
from worker_process import TIMEOUT

PROTOCOL_MD = Path(__file__).resolve().parents[2] / "protocol.md"
REAL_WORKER = [sys.executable, "-P", "-m", "mcpi_worker"]

pytestmark = pytest.mark.slow


def golden_kernel_rows() -> list[tuple[str, int, int, int, int]]:
    block = re.search(r"^```golden-kernels\n(.*?)^```$", PROTOCOL_MD.read_text(encoding="utf-8"), re.M | re.S)
    assert block is not None
    rows = []
    for line in block.group(1).splitlines():
        if line.strip() and not line.startswith("#"):
            kernel, *numbers = line.split()
            seed, stream, points, inside = map(int, numbers)
            rows.append((kernel, seed, stream, points, inside))
    return rows


def test_the_c_peer_reproduces_the_golden_kernel_table(c_peer: Path) -> None:
    for kernel, seed, stream, points, inside in golden_kernel_rows():
        counted = subprocess.run(
            [str(c_peer), "count", kernel, str(seed), str(stream), str(points)],
            capture_output=True, text=True, timeout=TIMEOUT, check=True,
        )  # fmt: skip
        assert int(counted.stdout) == inside, (kernel, seed, stream, points)


@pytest.mark.parametrize("version", [1, 2])
def test_the_c_client_finds_the_real_worker_keeps_every_rule_it_checks(c_peer: Path, version: int) -> None:
    run = subprocess.run(
        [str(c_peer), "client", "--versions", str(version), "--", *REAL_WORKER],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    lines = run.stdout.splitlines()
    assert run.returncode == 0 and all(line.startswith("ok ") for line in lines), run.stdout + run.stderr[-3000:]
    assert len(lines) == (6 if version == 2 else 5), run.stdout


def golden_frame(name: str) -> bytes:
    block = re.search(rf"^```golden:{name}\n#.*?\n(.*?)^```$", PROTOCOL_MD.read_text(encoding="utf-8"), re.M | re.S)
    assert block is not None, name
    return bytes.fromhex(block.group(1))


def test_the_c_worker_answers_golden_frames_with_golden_bytes(c_peer: Path) -> None:
    greeted = subprocess.run(
        [str(c_peer), "worker"], input=golden_frame("hello") + golden_frame("ping"),
        capture_output=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert greeted.returncode == 0 and greeted.stdout.endswith(golden_frame("pong")), greeted
    text = subprocess.run(
        [str(c_peer), "worker"], input=b"hello world\n", capture_output=True, timeout=TIMEOUT, check=False
    )
    assert (text.returncode, text.stdout) == (3, golden_frame("fatal_error")), text


@pytest.mark.parametrize(
    ("kernel", "points", "versions"),
    [("numpy", "2e6", "1,2"), ("numpy", "3e5", "1"), ("python", "2e5", "1,2"), ("python", "5e4", "1")],
)
def test_mcpi_estimate_drives_the_c_worker_to_the_real_workers_counts(
    c_peer: Path, tmp_path: Path, kernel: str, points: str, versions: str
) -> None:
    # Chunks of 1,000 points: the pool sends a version-2 worker ranges of many streams.
    run_args = ("estimate", "-n", points, "--chunk-size", "1000", "-s", "7", "--kernel", kernel, "-w", "2", "--json")
    stats = tmp_path / "stats.jsonl"
    peer = mcpi_clean(
        *run_args, *PATIENT, "--worker-cmd", shlex.join([str(c_peer), "worker", "--versions", versions]),
        env={"MCPI_PEER_STATS": str(stats)}, timeout=600,
    )  # fmt: skip
    real = mcpi_clean(*run_args, *PATIENT, timeout=600)
    assert peer.returncode == 0, peer.stderr
    assert real.returncode == 0, real.stderr
    assert json.loads(peer.stdout)["inside"] == json.loads(real.stdout)["inside"]
    served = [json.loads(line) for line in stats.read_text().splitlines()]
    assert served and {worker["version"] for worker in served} == {2 if versions == "1,2" else 1}
    ranges = sum(worker["ranges"] for worker in served)
    assert ranges > 0 if versions == "1,2" else ranges == 0, served
