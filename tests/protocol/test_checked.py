"""The typed seam that spares a request the field table's check (``protocol.checked``):
only the pool's ``Chunk`` claims it, and mypy refuses anything else to
``CoordinatorEnd.send_checked``, where a bool (``fields_checked=True``) let any caller
skip the check."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest
from slurm import in_ci

import mcpi_coordinator
import mcpi_worker
from mcpi_coordinator.pool.chunks import Chunk
from mcpi_worker.protocol.checked import CheckedSampleFields

REPOSITORY = Path(mcpi_worker.__file__).resolve().parent.parent


def test_the_one_type_that_claims_its_fields_were_checked_is_the_pool_s_chunk() -> None:
    """Every class statement in both packages naming ``CheckedSampleFields`` as a base: a
    new one is a new claim that its constructor applies the field table, to be read."""
    claims = []
    for package in (mcpi_worker, mcpi_coordinator):
        for path in sorted(Path(package.__file__).resolve().parent.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef) and any(
                    ast.unparse(base).endswith("CheckedSampleFields") for base in node.bases
                ):
                    claims.append(f"{path.relative_to(REPOSITORY)}:{node.name}")
    assert claims == ["mcpi_coordinator/pool/chunks.py:Chunk"]
    assert issubclass(Chunk, CheckedSampleFields)


SENDS = """
from mcpi_coordinator.pool.chunks import Chunk
from mcpi_worker.protocol import CoordinatorEnd, Sample

def send(end: CoordinatorEnd) -> None:
    end.send_checked(Chunk(1, 0, 10), now=0.0)
    end.send_checked({unchecked}, now=0.0)
"""


@pytest.mark.slow
def test_mypy_takes_a_chunk_to_send_checked_and_refuses_anything_else(tmp_path: Path) -> None:
    """mypy is the ``lint`` extra's (``.ci/run`` installs it): a skip without it, as after the
    README's ``.[test,bench]``, and a failure under ``CI=true``."""
    try:
        from mypy import api
    except ImportError:
        reason = "needs mypy (pip install -e '.[lint]'); .ci/run installs it"
        if in_ci():
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)

    source = tmp_path / "sends.py"
    source.write_text(textwrap.dedent(SENDS.format(unchecked='Sample(1, 1, 0, 10, "numpy")')), encoding="utf-8")
    out, err, status = api.run(
        ["--strict", "--no-error-summary", "--cache-dir", str(tmp_path / "cache"), str(source)]
    )
    lines = out.splitlines()
    assert status == 1 and len(lines) == 1, out + err  # the Chunk is taken
    assert 'sends.py:7: error: Argument 1 to "send_checked" of "CoordinatorEnd" has incompatible type' in lines[0]
