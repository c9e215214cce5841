"""``connection.failures``: where a worker's low-level failures become one ``WorkerFailure``
with a one-line reason, and an exit status becomes words. Pure translation, checked
without a process: the connection and pool tests see the same lines through real pipes."""

from __future__ import annotations

import errno
import signal

import pytest
import trio

from mcpi_coordinator.connection.failures import describe_exit, not_frames, worker_failure, worker_failures
from mcpi_coordinator.errors import WorkerFailure


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (trio.BrokenResourceError(), "pipe broken while sending a sample"),
        (trio.ClosedResourceError(), "pipe already closed while sending a sample"),
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "/no/mcpi-worker"),
            "No such file or directory: '/no/mcpi-worker' while sending a sample",
        ),
        (BrokenPipeError(errno.EPIPE, "Broken pipe"), "Broken pipe while sending a sample"),
        (OSError(), "OSError while sending a sample"),  # no strerror: the type says what it was
    ],
)
def test_a_low_level_error_becomes_one_worker_failure_chained_to_it(error: BaseException, reason: str) -> None:
    with pytest.raises(WorkerFailure) as raised, worker_failures("sending a sample"):
        raise error
    assert str(raised.value) == reason
    assert raised.value.__cause__ is error
    assert str(worker_failure(error, "sending a sample")) == reason  # the hot paths' form, the same words


def test_a_programming_error_passes_through_untouched() -> None:
    bug = ValueError("a programming error")
    with pytest.raises(ValueError) as raised, worker_failures("reading"):
        raise bug
    assert raised.value is bug
    with pytest.raises(AssertionError):
        worker_failure(bug, "reading")  # callers catch only LowLevelError


async def test_cancellation_passes_through_untouched() -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        with worker_failures("reading"):
            await trio.sleep(1)  # raises Cancelled at once: a WorkerFailure would escape the scope
    assert scope.cancelled_caught


@pytest.mark.parametrize(
    ("returncode", "words"),
    [
        (None, "still running"),
        (0, "exit code 0"),
        (3, "exit code 3"),
        (-signal.SIGKILL, "killed by SIGKILL"),
        (-signal.SIGTERM, "killed by SIGTERM"),
        (-250, "killed by signal 250"),  # no name for it
    ],
)
def test_an_exit_status_in_words(returncode: int | None, words: str) -> None:
    assert describe_exit(returncode) == words


@pytest.mark.parametrize(
    ("head", "quoted"),
    [
        (b"", None),
        (b"\x00\x00\x00\x10\x81\xa4type", None),  # a frame's length opens with a 0 byte
        (b"hello\n", "'hello'"),
        (b"\x1b[31mred\n", "'\\u001b[31mred'"),  # nothing a terminal would act on
    ],
)
def test_what_a_worker_wrote_instead_of_frames_is_quoted(head: bytes, quoted: str | None) -> None:
    assert not_frames(head) == quoted
