"""The C peer of the protocol (``tests/protocol/peers/mcpi_peer.c``), built once per session.

The peer is written from protocol.md alone, in another language than ours: a worker that
``mcpi estimate --worker-cmd`` drives, and a client that drives the real ``mcpi-worker``
(``tests/protocol/test_c_peer.py``). It needs a C compiler. Without one the tests skip
and say why, outside CI only: under ``CI=true`` (``.ci/run`` installs gcc when it runs
as root) a missing compiler is a failure, so that a CI run never passes without them.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from slurm import in_ci

SOURCE = Path(__file__).resolve().parent / "protocol" / "peers" / "mcpi_peer.c"
FLAGS = ("-std=c99", "-O2", "-Wall", "-Wextra", "-ffp-contract=off")
"""``-ffp-contract=off``: protocol.md §11 rounds each product before the sum; a fused
multiply-add decides the rare points within a rounding error of the circle differently."""


def compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def build(directory: Path) -> Path:
    """The peer compiled into ``directory`` (named after its source's hash); a skip (a
    failure under ``CI=true``) when there is no C compiler."""
    cc = compiler()
    if cc is None:
        reason = "no C compiler (cc, gcc or clang) to build the C protocol peer; .ci/run installs gcc as root"
        if in_ci():
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        print(f"\nSKIPPED: {reason}", file=sys.stderr)
        pytest.skip(reason)
    source = SOURCE.read_bytes()
    binary = directory / f"mcpi_peer-{hashlib.sha256(source).hexdigest()[:12]}"
    if not binary.exists():
        built = subprocess.run(
            [cc, *FLAGS, "-o", str(binary), str(SOURCE)], capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert built.returncode == 0, built.stderr
        assert "warning" not in built.stderr, built.stderr
    return binary
