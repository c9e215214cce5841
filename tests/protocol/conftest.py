"""Fixtures of the protocol tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from c_peer import build


@pytest.fixture(scope="session")
def c_peer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The C peer written from protocol.md alone (``tests/c_peer.py``), built once."""
    return build(tmp_path_factory.mktemp("c-peer"))
