"""Shared pytest configuration. Fixtures of one area live beside its tests."""

import signal
from collections.abc import Iterator

import pytest
import structlog


def pytest_configure(config: pytest.Config) -> None:
    """The suite runs with the stop signals' usual dispositions, however it was started.

    ``mcpi`` and ``mcpi-worker`` leave a stop signal that their parent ignores ignored, as
    ``nohup`` and a shell's background jobs ask (``cli.boot.hold``): a suite started under
    ``nohup`` (SIGHUP ignored) or as a background job of a script (SIGINT ignored) handed
    that on to every command its tests start, and every test that stops one with it
    waited for an end that was never coming. The tests of that rule set the ignore
    themselves."""
    del config
    for signum, usual in (
        (signal.SIGINT, signal.default_int_handler),
        (signal.SIGTERM, signal.SIG_DFL),
        (signal.SIGHUP, signal.SIG_DFL),
    ):
        if signal.getsignal(signum) == signal.SIG_IGN:
            signal.signal(signum, usual)


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


@pytest.fixture
def quiet_structlog() -> Iterator[None]:
    """structlog at ``critical`` only, for a test that runs the worker loop in this process
    (its lines would fill the captured output).

    Function-scoped on purpose: ``_structlog_defaults`` resets the configuration before
    every test, after any wider-scoped fixture has run. A hypothesis test asks for it with
    ``pytest.mark.usefixtures``: its health check refuses a function-scoped fixture among
    the test's arguments, not one set up around the test as a whole.
    """
    saved = structlog.get_config()
    structlog.configure(
        processors=[structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(50),
        cache_logger_on_first_use=False,
    )
    yield
    structlog.configure(**saved)
