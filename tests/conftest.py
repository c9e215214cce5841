"""Shared pytest configuration. Fixtures of one area live beside its tests."""

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    """Every test starts from structlog's default configuration and leaves it so.

    Entry points configure structlog globally (a level filter, a stream); a test that
    runs one in-process would otherwise leak its configuration into later tests, e.g.
    a "warning" filter hiding the info lines another test captures with capture_logs.
    """
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
