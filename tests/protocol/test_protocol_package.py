"""``mcpi_worker.protocol`` as a package: every name it lists is there, each end of a
connection (``coordinator_end``, ``worker_end``) imported only when one of its names is
asked for (a worker never uses the coordinator's end, nor ``mcpi estimate`` the worker's:
each import was part of that process's start)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mcpi_worker import protocol
from mcpi_worker.protocol import coordinator_end, worker_end


def test_every_name_the_package_lists_is_its_module_s() -> None:
    for name in protocol.__all__:
        assert getattr(protocol, name) is not None, name
    assert protocol.CoordinatorEnd is coordinator_end.CoordinatorEnd
    assert protocol.WorkerEnd is worker_end.WorkerEnd
    assert protocol.ExitCode is worker_end.ExitCode


def test_a_name_it_does_not_have_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nonsense'"):
        protocol.Nonsense  # noqa: B018


@pytest.mark.parametrize(
    ("asked", "imported", "not_imported"),
    [
        ("Sample", (), ("coordinator_end", "worker_end")),
        ("WorkerEnd", ("worker_end",), ("coordinator_end",)),
        ("CoordinatorEnd", ("coordinator_end",), ("worker_end",)),
    ],
)
def test_an_end_is_imported_when_one_of_its_names_is_asked_for(
    asked: str, imported: tuple[str, ...], not_imported: tuple[str, ...]
) -> None:
    script = (
        "import json, sys\n"
        f"from mcpi_worker.protocol import {asked}\n"
        "print(json.dumps([m.rsplit('.', 1)[1] for m in sys.modules if m.startswith('mcpi_worker.protocol.')]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    loaded = json.loads(done.stdout)
    assert all(name in loaded for name in imported), loaded
    assert not any(name in loaded for name in not_imported), loaded
