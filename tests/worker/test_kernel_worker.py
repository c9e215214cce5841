"""Real worker processes with each implementation of the numpy kernel, and each fallback.

Every case starts ``mcpi-worker`` with its environment set up for the case (what
``MCPI_NUMPY_IMPL`` asks for; numba hidden; nowhere to cache; a fresh cache), sends
the golden samples and reads the answers and the JSON log lines on stderr. Then a
``Worker`` over real pipes in this process, cancelled in the middle of a fused sample.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import structlog
from command_line import FAKE_WORKER, MCPI
from test_golden import KERNEL_TABLE
from worker_process import worker_command

import mcpi_worker
from mcpi_coordinator.testing.processes import still_running
from mcpi_worker.kernels import NumpyKernel, Policy, StopCheck, count_python, numpy_impl
from mcpi_worker.logs import LOG_LEVELS
from mcpi_worker.protocol import (
    MAX_POINTS,
    NEED_DATA,
    PROTOCOL_VERSIONS,
    WORKER_MESSAGES,
    Cancel,
    Error,
    ErrorCode,
    FrameDecoder,
    Hello,
    Message,
    Result,
    Sample,
    Shutdown,
    Welcome,
    encode,
)
from mcpi_worker.server import ExitCode, Worker

TIMEOUT = 120  # a worker that compiles on a loaded 2-core CI machine
WARMING_TIMEOUT = 1800
"""A bound against a hang for a warming process to finish, compile and object cache: ~10 s
of CPU, which at this machine's worst load (a few per cent of a core at nice 0) takes
minutes; reached only by a warming process that never ends."""
GOLDEN = [row[1:] for row in KERNEL_TABLE if row[0] == "numpy"]
RANGE = Sample(id=len(GOLDEN) + 1, seed=12345, stream=2**32 - 30, points=1001, kernel="numpy", streams=75, group=10)
"""A range of streams (lanes: a full group and a padded one, across stream words 1 -> 2)."""


def range_insides(sample: Sample) -> tuple[int, ...]:
    singles = [numpy_impl.count(sample.seed, sample.stream + i, sample.points) for i in range(sample.streams)]
    group = sample.group or sample.streams
    return tuple(sum(singles[i : i + group]) for i in range(0, sample.streams, group))


def base_environment(**changes: str | None) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MCPI_", "NUMBA_"))}
    for key, value in changes.items():
        if value is not None:
            environ[key] = value
    return environ


def run_worker(environ: dict[str, str]) -> tuple[list[Message], list[dict[str, Any]]]:
    """Hello and every golden numpy sample; once all are answered, end of input. The
    worker's answers, and its stderr log lines (a few: far below a pipe's capacity)."""
    frames = [Hello(versions=PROTOCOL_VERSIONS, client="test_kernel_worker")]
    frames += [
        Sample(id=i, seed=seed, stream=stream, points=points, kernel="numpy")
        for i, (seed, stream, points, _) in enumerate(GOLDEN, start=1)
    ]
    frames.append(RANGE)
    process = subprocess.Popen(
        worker_command(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environ,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        process.stdin.write(b"".join(encode(frame) for frame in frames))
        process.stdin.flush()
        decoder = FrameDecoder(WORKER_MESSAGES)
        messages: list[Message] = []
        deadline = time.monotonic() + TIMEOUT
        while len(messages) < len(frames):
            ready, _, _ = select.select([process.stdout], [], [], deadline - time.monotonic())
            assert ready, f"the worker answered {len(messages)} of {len(frames)} in {TIMEOUT} s"
            data = os.read(process.stdout.fileno(), 65536)
            assert data, "the worker closed its output early"
            decoder.feed(data)
            while (message := decoder.next_message()) is not NEED_DATA:
                messages.append(message)  # type: ignore[arg-type]
        process.stdin.close()
        assert process.wait(timeout=TIMEOUT) == 0
        assert process.stderr is not None
        stderr = process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    logs = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    return messages, logs


def assert_golden_answers(messages: list[Message]) -> None:
    welcome, *results = messages
    assert isinstance(welcome, Welcome)
    assert sorted((r.id, r.inside) for r in results if isinstance(r, Result) and r.id != RANGE.id) == [
        (i, inside) for i, (*_, inside) in enumerate(GOLDEN, start=1)
    ]
    (in_range,) = [r for r in results if isinstance(r, Result) and r.id == RANGE.id]
    assert in_range.insides == range_insides(RANGE)


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry.get("event") == name]


@pytest.fixture
def cache_dir(tmp_path: Path) -> str:
    return str(tmp_path / "numba-cache")


@pytest.mark.slow
def test_fused_compiles_once_per_cache_directory_then_loads(cache_dir: str) -> None:
    # numba's own cache: without MCPI_OBJECT_CACHE=off the first worker's warming process
    # writes our object cache meanwhile, and the second may load that instead.
    environ = base_environment(MCPI_NUMPY_IMPL="fused", NUMBA_CACHE_DIR=cache_dir, MCPI_OBJECT_CACHE="off")
    first_messages, first_logs = run_worker(environ)
    second_messages, second_logs = run_worker(environ)
    for messages in (first_messages, second_messages):
        assert_golden_answers(messages)
    (first,) = events(first_logs, "numpy_kernel_implementation")
    (second,) = events(second_logs, "numpy_kernel_implementation")
    assert first["implementation"] == second["implementation"] == "numba-fused"
    assert (first["compiled"], second["compiled"]) == (True, False)
    assert first["cache_path"] == second["cache_path"]
    assert first["cache_path"].startswith(cache_dir)


def test_auto_answers_short_work_without_loading_numba(cache_dir: str) -> None:
    messages, logs = run_worker(base_environment(NUMBA_CACHE_DIR=cache_dir))
    assert_golden_answers(messages)
    assert not events(logs, "numpy_kernel_implementation")
    assert not os.path.exists(cache_dir)  # numba never even looked for its cache


def test_numpy_policy_never_loads_numba(cache_dir: str) -> None:
    messages, logs = run_worker(base_environment(MCPI_NUMPY_IMPL="numpy", NUMBA_CACHE_DIR=cache_dir))
    assert_golden_answers(messages)
    assert not events(logs, "numpy_kernel_implementation")
    assert not events(logs, "fused_kernel_unavailable")


@pytest.fixture
def without_numba(tmp_path: Path) -> str:
    """A PYTHONPATH entry on which ``import numba`` fails, as where it is not installed."""
    shadow = tmp_path / "shadow" / "numba"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'numba' (hidden)\")\n")
    return str(shadow.parent)


def test_without_numba_the_numpy_implementation_answers(without_numba: str) -> None:
    messages, logs = run_worker(base_environment(MCPI_NUMPY_IMPL="fused", PYTHONPATH=without_numba))
    assert_golden_answers(messages)
    (said,) = events(logs, "fused_kernel_unavailable")  # once, not once per sample
    assert said["level"] == "warning" and "numba is not installed" in said["reason"]
    assert not events(logs, "numpy_kernel_implementation")


def test_self_check_without_numba_says_numpy_runs(without_numba: str) -> None:
    done = subprocess.run(
        [*worker_command(), "--self-check"],
        capture_output=True,
        text=True,
        env=base_environment(PYTHONPATH=without_numba),
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "numpy (numba-fused unavailable: numba is not installed" in done.stdout


@pytest.mark.slow
def test_self_check_with_numba_compares_both_implementations(cache_dir: str) -> None:
    done = subprocess.run(
        [*worker_command(), "--self-check"],
        capture_output=True,
        text=True,
        env=base_environment(MCPI_NUMPY_IMPL="fused", NUMBA_CACHE_DIR=cache_dir),
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "numba-fused  compiled in" in done.stdout
    assert "same count" in done.stdout and "loads numba-fused as it starts" in done.stdout


def _uncacheable_copy(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the package (the directory for ``PYTHONPATH``) whose ``kernels/__pycache__``
    is a file, so that numba cannot cache beside the sources, and a file to put the other
    cache directories under (nothing can be made inside a file, even by root)."""
    source = tmp_path / "src"
    shutil.copytree(
        Path(mcpi_worker.__file__).parent,
        source / "mcpi_worker",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (source / "mcpi_worker" / "kernels" / "__pycache__").write_text("not a directory\n")
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    return source, not_a_directory


@pytest.mark.slow
def test_where_nothing_can_be_cached_it_says_so_once_and_compiles_in_memory(tmp_path: Path) -> None:
    """A read-only install and no writable user cache: numba has no cache directory."""
    source, not_a_directory = _uncacheable_copy(tmp_path)
    environ = base_environment(
        MCPI_NUMPY_IMPL="fused", PYTHONPATH=str(source), XDG_CACHE_HOME=str(not_a_directory / "cache")
    )
    messages, logs = run_worker(environ)
    assert_golden_answers(messages)
    (said,) = events(logs, "fused_kernel_cache_unavailable")
    assert said["level"] == "warning" and "NUMBA_CACHE_DIR" in said["consequence"]
    (loaded,) = events(logs, "numpy_kernel_implementation")
    assert loaded["implementation"] == "numba-fused"
    assert (loaded["compiled"], loaded["cache_path"]) == (True, None)


def test_under_auto_where_nothing_can_be_cached_numpy_counts_and_it_says_so_once(tmp_path: Path) -> None:
    """No home, a ``NUMBA_CACHE_DIR`` that cannot be made, an install whose ``__pycache__``
    cannot be written (a system user running a root-owned checkout): every load would
    compile in memory, in every worker, many times NumPy's time for the whole run. Under
    ``auto``, even with a hint of a long run, NumPy counts and the worker says why once.
    (Before, the hint started that compile in every worker.)"""
    source, not_a_directory = _uncacheable_copy(tmp_path)
    environ = base_environment(
        MCPI_NUMPY_IMPL="auto",
        MCPI_EXPECTED_POINTS=str(10**9),  # a long run: the load would start at once
        PYTHONPATH=str(source),
        HOME=str(not_a_directory / "home"),
        XDG_CACHE_HOME=str(not_a_directory / "cache"),
        NUMBA_CACHE_DIR=str(not_a_directory / "numba"),
    )
    messages, logs = run_worker(environ)
    assert_golden_answers(messages)
    (said,) = events(logs, "fused_kernel_cache_unavailable")
    assert said["level"] == "warning" and said["implementation"] == "numpy", said
    assert "NUMBA_CACHE_DIR" in said["consequence"] and "NUMBA_CACHE_DIR" in said["reason"]
    assert not events(logs, "numpy_kernel_implementation")
    assert not events(logs, "fused_kernel_unavailable")


# ------------------------------------------------------------------ in-process, real pipes


class PipeClient:
    def __init__(self, send_fd: int, receive_fd: int) -> None:
        self.send_fd, self.receive_fd = send_fd, receive_fd
        self.decoder = FrameDecoder(WORKER_MESSAGES)

    def send(self, message: Message) -> None:
        os.write(self.send_fd, encode(message))

    def receive(self) -> Message:
        while (message := self.decoder.next_message()) is NEED_DATA:
            data = os.read(self.receive_fd, 65536)
            assert data, "the worker closed its output"
            self.decoder.feed(data)
        return message  # type: ignore[return-value]


@contextlib.contextmanager
def in_process_worker(**options: Any) -> Iterator[PipeClient]:
    """A ``Worker(**options)`` serving over real pipes on a thread of this process, and a
    client on them; at the end, a ``shutdown`` it must obey with exit code 0."""
    request_read, request_write = os.pipe()
    response_read, response_write = os.pipe()
    worker = Worker(request_read, response_write, **options)
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(worker.serve()), daemon=True)
    thread.start()
    client = PipeClient(request_write, response_read)
    try:
        yield client
        client.send(Shutdown())
        thread.join(TIMEOUT)
        assert outcome and outcome[0].exit_code == ExitCode.OK
    finally:
        for fd in (request_write, response_read):
            os.close(fd)


def test_a_fused_sample_is_cancelled_in_the_middle() -> None:
    """The cancel reaches the compiled loop between two of its blocks: the kernel has
    already polled (so it is running), and polls again after the cancel."""
    fused_kernel = NumpyKernel(Policy.FUSED)
    fused_kernel.prepare()
    polls: list[bool] = []
    running = threading.Event()

    def kernel(seed: int, stream: int, points: int, should_stop: StopCheck) -> int:
        def polled() -> bool:
            answer = should_stop()
            polls.append(answer)
            running.set()
            return answer

        return fused_kernel(seed, stream, points, polled)

    with in_process_worker(kernels={"numpy": kernel, "python": count_python}) as client:
        client.send(Hello(versions=PROTOCOL_VERSIONS, client="test"))
        assert isinstance(client.receive(), Welcome)
        client.send(Sample(id=1, seed=3, stream=0, points=MAX_POINTS, kernel="numpy"))
        assert running.wait(TIMEOUT)
        client.send(Cancel(1))
        answer = client.receive()
        assert isinstance(answer, Error) and answer.code == ErrorCode.CANCELLED
        assert answer.message == "cancelled before it finished"
        assert polls[-1] is True and not any(polls[:-1])
        client.send(Sample(id=2, seed=12345, stream=0, points=1_000_000, kernel="numpy"))
        result = client.receive()
        assert isinstance(result, Result) and result.inside == numpy_impl.count(12345, 0, 1_000_000)


@pytest.mark.parametrize("expected_points", [None, 0, 123])
def test_the_size_hint_reaches_the_kernel_before_the_samples_sent_with_the_hello(expected_points: int | None) -> None:
    order: list[tuple[str, int]] = []
    with in_process_worker(
        expect=lambda points: order.append(("expect", points)),
        on_sample=lambda sample: order.append(("sample", sample.id)),
    ) as client:
        big = Sample(id=1, seed=3, stream=0, points=2_000_000, kernel="numpy")  # on a compute thread
        small = Sample(id=2, seed=3, stream=1, points=10, kernel="numpy")  # on the reader
        os.write(client.send_fd, encode(Hello(PROTOCOL_VERSIONS, "t", expected_points)) + encode(big) + encode(small))
        assert isinstance(client.receive(), Welcome)
        answers = {client.receive().id for _ in range(2)}  # type: ignore[attr-defined]
        assert answers == {1, 2}
    hinted = [] if expected_points is None else [("expect", expected_points)]
    assert order[: len(hinted)] == hinted and sorted(order[len(hinted) :]) == [("sample", 1), ("sample", 2)]


class WaitedForALoad:
    """A numpy kernel whose every sample says it waited 10 s for a load (``take_waited_s``)."""

    def __call__(self, seed: int, stream: int, points: int, should_stop: StopCheck) -> int:
        return numpy_impl.count(seed, stream, points, should_stop)

    def take_waited_s(self) -> float:
        return 10.0


def test_a_result_s_elapsed_leaves_out_the_wait_for_a_load() -> None:
    """``elapsed_s`` is the time the kernel ran: a coordinator sizes its next requests by
    it, and a first answer slowed by the load made them one stream each."""
    with in_process_worker(kernels={"numpy": WaitedForALoad(), "python": count_python}) as client:
        client.send(Hello(PROTOCOL_VERSIONS, "t"))
        assert isinstance(client.receive(), Welcome)
        client.send(Sample(id=1, seed=3, stream=0, points=2_000_000, kernel="numpy"))
        result = client.receive()
        assert isinstance(result, Result) and result.inside == numpy_impl.count(3, 0, 2_000_000)
        assert result.elapsed_s == 0.0  # its time less the 10 s it says it waited, never below 0


@contextlib.contextmanager
def worker_process(
    environ: dict[str, str], expected_points: int | None = None, arguments: tuple[str, ...] = ()
) -> Iterator[tuple[subprocess.Popen[bytes], PipeClient]]:
    """A real ``mcpi-worker`` (with ``arguments``) past its welcome (its hello carrying
    ``expected_points``) and a client on its pipes; killed at the end if it is still running."""
    process = subprocess.Popen(
        [*worker_command(), *arguments],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environ,
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    try:
        client = PipeClient(process.stdin.fileno(), process.stdout.fileno())
        client.send(Hello(PROTOCOL_VERSIONS, "test_kernel_worker", expected_points))
        assert isinstance(client.receive(), Welcome)
        yield process, client
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            stream.close()


@pytest.mark.slow
def test_a_long_range_in_lanes_is_cancelled_in_the_middle_by_a_real_worker() -> None:
    """A real ``mcpi-worker`` counting minutes of a range in lanes: once it has spent CPU
    time on it (psutil, not a flag), a cancel ends it with ``cancelled``; the worker
    then answers a range exactly and exits 0 at end of input."""
    environ = base_environment(MCPI_NUMPY_IMPL="fused")  # numba's own cache: compiled once
    with worker_process(environ) as (process, client):  # under fused: loaded before the welcome
        cancel_a_long_range_in_the_middle(process, client)
        assert process.stdin is not None
        process.stdin.close()
        assert process.wait(timeout=TIMEOUT) == 0


def cancel_a_long_range_in_the_middle(process: subprocess.Popen[bytes], client: PipeClient) -> None:
    """Send a fused worker minutes of a range in lanes, cancel it once the worker has spent
    CPU time on it (psutil: the moment is the worker's own progress; ``TIMEOUT`` only
    bounds a hang), expect ``cancelled``, then a range answered exactly."""
    worker = psutil.Process(process.pid)
    before = sum(worker.cpu_times()[:2])
    client.send(Sample(id=1, seed=3, stream=0, points=2**33, kernel="numpy", streams=64))
    deadline = time.monotonic() + TIMEOUT
    while sum(worker.cpu_times()[:2]) < before + 0.3:  # counting, well inside the range
        assert time.monotonic() < deadline, "the worker never started counting"
        time.sleep(0.01)
    client.send(Cancel(1))
    answer = client.receive()
    assert isinstance(answer, Error) and answer.code == ErrorCode.CANCELLED
    client.send(RANGE)
    result = client.receive()
    assert isinstance(result, Result) and result.insides == range_insides(RANGE)


@pytest.mark.slow
def test_in_a_process_that_configured_no_logging_the_kernels_say_nothing_on_stdout() -> None:
    """A fake worker runs the kernels too, and speaks the protocol on its stdout."""
    script = (
        "from mcpi_worker.kernels import Implementation, count_numpy\n"
        "count_numpy(1, 0, 10, implementation=Implementation.NUMBA_FUSED)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=base_environment(),
        timeout=TIMEOUT,
        check=True,
    )
    assert done.stdout == ""
    assert "numpy_kernel_implementation" in done.stderr


@pytest.mark.slow
def test_workers_started_from_a_directory_holding_another_mcpi_worker_do_not_import_it(tmp_path: Path) -> None:
    """``mcpi estimate`` run from a checkout of some other version: its workers run the
    coordinator's own package, not the one in the current directory."""
    mcpi = Path(sys.executable).with_name("mcpi")
    if not mcpi.exists():
        pytest.skip("no installed mcpi command beside this interpreter")
    marker = tmp_path / "imported"
    other = tmp_path / "checkout" / "mcpi_worker"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nraise SystemExit('the other mcpi_worker was imported')\n"
    )
    command = [str(mcpi), "estimate", "--points", "1e5", "--workers", "1", "--seed", "5", "--json"]

    def run(directory: Path) -> dict[str, Any]:
        done = subprocess.run(
            command, cwd=directory, capture_output=True, text=True, env=base_environment(), timeout=TIMEOUT, check=False
        )
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    from_checkout = run(other.parent)
    assert not marker.exists()
    assert from_checkout["inside"] == run(tmp_path)["inside"]


def warmers(cache_dir: str) -> list[psutil.Process]:
    """The cache-warming processes working on ``cache_dir`` (NUMBA_CACHE_DIR)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if "mcpi_worker.kernels.warm" in (process.info["cmdline"] or []) and (
                process.environ().get("NUMBA_CACHE_DIR") == cache_dir
            ):
                found.append(process)
        except psutil.Error:
            continue
    return found


def long_sample_answers(environ: dict[str, str]) -> tuple[list[Message], list[dict[str, Any]]]:
    """One sample past auto's switch (2.5e8 points: ~0.7 s of NumPy); once it is answered,
    end of input. The answer, and the worker's log lines."""
    with worker_process(environ) as (process, client):
        client.send(Sample(id=1, seed=7, stream=0, points=250_000_000, kernel="numpy"))
        messages = [client.receive()]
        assert process.stdin is not None and process.stderr is not None
        process.stdin.close()
        stderr = process.stderr.read()
        assert process.wait(timeout=TIMEOUT) == 0
    logs = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    return messages, logs


@pytest.mark.slow
def test_auto_never_compiles_in_the_worker_a_cold_cache_is_warmed_by_another_process(cache_dir: str) -> None:
    """The first run after an install: the worker counts on with NumPy (no compile on its
    CPU, no wait at its exit) and a separate process compiles into numba's cache."""
    environ = base_environment(NUMBA_CACHE_DIR=cache_dir)
    try:
        messages, logs = long_sample_answers(environ)
        (result,) = [m for m in messages if isinstance(m, Result)]
        assert result.inside == numpy_impl.count(7, 0, 250_000_000)
        assert events(logs, "fused_kernel_cache_cold")
        assert not events(logs, "numpy_kernel_implementation")  # nothing loaded, nor compiled, here
        deadline = time.monotonic() + TIMEOUT
        while not warmers(cache_dir):  # it may be starting still: the worker did not wait for it
            assert time.monotonic() < deadline, "no process warms the cache"
            time.sleep(0.05)
        (warmer,) = warmers(cache_dir)
        if AUTOGROUP_SCHEDULING:  # its session too is at nice 19, not only the process
            while " nice 19" not in session_priority(warmer.pid):
                assert time.monotonic() < deadline, f"the warming session is at {session_priority(warmer.pid)!r}"
                time.sleep(0.05)
    finally:
        for process in warmers(cache_dir):
            process.kill()


AUTOGROUP_SCHEDULING = Path("/proc/self/autogroup").exists()
"""Linux shares CPU by session here (a process's nice value ranks it within its session)."""


def session_priority(pid: int) -> str:
    """``/autogroup-N nice K``: the session's scheduling group and its nice value."""
    try:
        return Path(f"/proc/{pid}/autogroup").read_text().strip()
    except OSError:
        return ""  # it exited meanwhile


@pytest.mark.slow
@pytest.mark.skipif(not AUTOGROUP_SCHEDULING, reason="no autogroup scheduling on this system")
def test_the_warming_process_lowers_its_own_session_only() -> None:
    """In a session of its own (as ``start_warming`` starts it) the warming process gives
    the session nice 19; run from a terminal's session, it leaves that session alone."""
    script = "from mcpi_worker.kernels.warm import lower_session_priority as l; print(l(19))"
    for own_session, expected in ((True, "True"), (False, "False")):
        done = subprocess.run(
            [sys.executable, "-c", script + "; print(open('/proc/self/autogroup').read().strip())"],
            capture_output=True, text=True, timeout=TIMEOUT, check=True, start_new_session=own_session,
        )  # fmt: skip
        changed, group = done.stdout.splitlines()
        assert changed == expected
        assert group.endswith(" nice 19") == own_session, group
    assert not session_priority(os.getpid()).endswith(" nice 19")


def warm_cache(environ: dict[str, str]) -> None:
    """Compile the fused kernels into the cache ``environ`` names, and mark it warm."""
    warm = subprocess.run(
        [sys.executable, "-c", "from mcpi_worker.kernels.warm import main; main(niceness=0)"],
        env=environ,
        capture_output=True,
        timeout=WARMING_TIMEOUT,
        check=False,
    )
    assert warm.returncode == 0, warm.stderr


@pytest.mark.slow
def test_auto_loads_from_a_warm_cache_in_the_worker(cache_dir: str) -> None:
    environ = base_environment(NUMBA_CACHE_DIR=cache_dir)
    warm_cache(environ)
    messages, logs = long_sample_answers(environ)
    (result,) = [m for m in messages if isinstance(m, Result)]
    assert result.inside == numpy_impl.count(7, 0, 250_000_000)
    (loaded,) = events(logs, "numpy_kernel_implementation")
    assert loaded["compiled"] is False and not events(logs, "fused_kernel_cache_cold")


HINTED = (
    Sample(id=1, seed=7, stream=0, points=20_000_000, kernel="numpy"),
    Sample(id=2, seed=7, stream=1, points=2_000_000, kernel="numpy", streams=10, group=3),
    Sample(id=3, seed=12345, stream=0, points=1_000_000, kernel="numpy"),
)
"""A long run's first samples: each far below auto's switch point (2e8 points)."""


def hinted_answers(environ: dict[str, str], expected_points: int | None) -> tuple[list[Result], list[dict[str, Any]]]:
    with worker_process(environ, expected_points) as (process, client):
        results = []
        for sample in HINTED:  # one at a time: the first is the first the worker counts
            client.send(sample)
            result = client.receive()
            assert isinstance(result, Result), result
            results.append(result)
        assert process.stdin is not None and process.stderr is not None
        process.stdin.close()  # ends in order, not waiting for the points the hint announced
        stderr = process.stderr.read()
        assert process.wait(timeout=TIMEOUT) == 0
    return results, [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def warm_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A numba cache compiled and marked warm once, for this module's tests that need one."""
    directory = str(tmp_path_factory.mktemp("warm") / "numba-cache")
    warm_cache(base_environment(NUMBA_CACHE_DIR=directory))
    return directory


@pytest.mark.slow
def test_a_long_hinted_run_counts_in_the_lanes_from_its_first_sample(warm_cache_dir: str) -> None:
    """protocol.md §5.1: a hello announcing 1e10 points makes auto load at once (from a
    warm cache), and the first sample waits for it rather than count with NumPy; the
    counts are those of a run without the hint, which counts with NumPy (loading through
    numba, whose switch point is beyond these samples; from the object cache auto would
    switch at 2e7 points, kernels/choice.py)."""
    environ = base_environment(NUMBA_CACHE_DIR=warm_cache_dir)
    hinted, logs = hinted_answers(environ, 10**10)
    plain, plain_logs = hinted_answers({**environ, "MCPI_OBJECT_CACHE": "off"}, None)
    assert [r.implementation for r in hinted] == ["numba-fused"] * len(HINTED)
    assert [r.implementation for r in plain] == ["numpy"] * len(HINTED)
    assert [(r.inside, r.insides) for r in hinted] == [(r.inside, r.insides) for r in plain]
    assert hinted[0].inside == numpy_impl.count(7, 0, 20_000_000)
    (loaded,) = events(logs, "numpy_kernel_implementation")
    assert loaded["numpy_points"] == 0 and "hint of 10000000000 points" in loaded["why"]
    assert not events(plain_logs, "numpy_kernel_implementation")


def maps_numpy(pid: int) -> bool:
    """Whether NumPy's core extension is loaded in process ``pid`` (its memory map)."""
    with open(f"/proc/{pid}/maps") as maps:
        return "_multiarray_umath" in maps.read()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the worker's memory map in /proc")
@pytest.mark.parametrize("policy", ["auto", "numpy"])
def test_a_worker_counting_from_the_object_cache_never_imports_numpy(warm_cache_dir: str, policy: str) -> None:
    """A hinted worker whose fused kernels come from our object cache counts one stream, a
    range and a short stream, each seeded by the compiled code, with NumPy's counts and
    without NumPy ever loaded in it (its import is most of what such a worker would spend
    beside its counting); under MCPI_NUMPY_IMPL=numpy the same worker loads it."""
    environ = base_environment(NUMBA_CACHE_DIR=warm_cache_dir, MCPI_NUMPY_IMPL=policy)
    with worker_process(environ, 10**10) as (process, client):
        results = []
        for sample in HINTED:
            client.send(sample)
            result = client.receive()
            assert isinstance(result, Result), result
            results.append(result)
        assert maps_numpy(process.pid) is (policy == "numpy")
    expected = [
        (numpy_impl.count(7, 0, 20_000_000), None),
        (sum(range_insides(HINTED[1])), range_insides(HINTED[1])),
        (numpy_impl.count(12345, 0, 1_000_000), None),
    ]
    assert [(r.inside, r.insides) for r in results] == expected
    assert {r.implementation for r in results} == {"numba-fused" if policy == "auto" else "numpy"}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the worker's memory map in /proc")
def test_a_hinted_worker_loading_from_a_warm_cache_starts_no_process_machinery(warm_cache_dir: str) -> None:
    """The size hint's look at the cache (``numba_marker``) is on the path from the hello
    to a long run's first count: it imported ``subprocess`` (its C half, ``_posixsubprocess``,
    shows in the memory map) for the warming process, which a warm cache never starts. At
    ``--log-level warning``, as ``mcpi estimate`` starts its local workers (structlog, which
    a worker logging at info loads, imports ``subprocess`` itself)."""
    environ = base_environment(NUMBA_CACHE_DIR=warm_cache_dir, MCPI_NUMPY_IMPL="auto")
    with worker_process(environ, 10**10, ("--log-level", "warning")) as (process, client):
        client.send(HINTED[1])
        result = client.receive()
        assert isinstance(result, Result), result
        with open(f"/proc/{process.pid}/maps") as maps:
            assert "_posixsubprocess" not in maps.read()
    assert result.insides == range_insides(HINTED[1])
    assert result.implementation == "numba-fused"


@pytest.mark.slow
def test_mcpi_estimate_hints_each_worker_its_share_and_long_runs_load_at_once(warm_cache_dir: str) -> None:
    environ = base_environment(NUMBA_CACHE_DIR=warm_cache_dir)
    command = [sys.executable, "-m", "mcpi_coordinator", "estimate", "--points", "3e8", "--workers", "2",
               "--seed", "3", "--json", "--log-level", "info", "--log-format", "json"]  # fmt: skip
    done = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["inside"] == sum(numpy_impl.count(3, stream, 10_000_000) for stream in range(30))
    logs = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    hints = [e["fields"]["expected_points"] for e in logs if e["event"].endswith(": handshake")]
    assert hints == [150_000_000, 150_000_000]
    loads = [e["fields"] for e in logs if e["event"].endswith(": numpy_kernel_implementation")]
    assert [(load["numpy_points"], "hint" in load["why"]) for load in loads] == [(0, True)] * 2


@pytest.mark.slow
def test_mcpi_estimate_warms_a_cold_cache_itself_and_ends_no_process_of_it(cache_dir: str) -> None:
    """The first run after an install: its workers pass their cold cache, and so NumPy's
    switch point, and a process warms the cache. It is the coordinator's, not a worker's:
    a worker's would be its orphan, ended with the run ('orphans_ended', a warning on
    every first run) before the cache was ever warm."""
    environ = base_environment(NUMBA_CACHE_DIR=cache_dir)
    command = [sys.executable, "-m", "mcpi_coordinator", "estimate", "--points", "3e8", "--workers", "1",
               "--seed", "3", "--json", "--startup-timeout", "300"]
    try:
        done = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=TIMEOUT, check=False)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["inside"] == sum(
            numpy_impl.count(3, stream, 10_000_000) for stream in range(30)
        )
        assert "orphans_ended" not in done.stderr, done.stderr
        deadline = time.monotonic() + TIMEOUT  # a bound against a hang, not a claim of speed
        while not warmers(cache_dir) and not list(Path(cache_dir).rglob("*.nbi")):
            assert time.monotonic() < deadline, "nothing warms the cache, and it is not warm"
            time.sleep(0.05)
    finally:
        for process in warmers(cache_dir):
            process.kill()


@pytest.mark.slow
def test_mcpi_estimate_warms_no_cache_for_workers_that_are_not_its_own_here(cache_dir: str) -> None:
    """A cold cache, but workers that are not mcpi-workers started here (``--worker-cmd``;
    ``--host`` and ``--slurm`` alike): they do not load this install's cache on this
    machine, so no process warms it (it would only take a CPU from the user), and the
    run leaves no process behind."""
    environ = base_environment(NUMBA_CACHE_DIR=cache_dir)
    command = [*MCPI, "estimate", "--points", "4e6", "--chunk-size", "1e6", "--workers", "2",
               "--worker-cmd", FAKE_WORKER, "--seed", "3", "--json"]  # fmt: skip
    process = psutil.Popen(command, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children: set[int] = set()
    try:
        while process.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                children.update(child.pid for child in process.children(recursive=True))
            time.sleep(0.005)
        _, err = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0, err
        assert not warmers(cache_dir)  # a warmer outlives the run by design: it would be here
        assert not still_running(children)
    finally:
        for warmer in warmers(cache_dir):
            warmer.kill()
        for pid in still_running(children):
            psutil.Process(pid).kill()



def _counting_logger(level: str, calls: list[str]) -> type:
    """structlog's filtering logger at ``level``, noting every ``debug`` call made to it."""
    filtering: Any = structlog.make_filtering_bound_logger(LOG_LEVELS[level])

    class Counting(filtering):  # type: ignore[misc]
        def debug(self, event: str, *args: Any, **kw: Any) -> Any:
            calls.append(event)
            return super().debug(event, *args, **kw)

    return Counting


@pytest.mark.parametrize(("level", "logged"), [("info", 0), ("debug", 20)])
def test_a_sample_makes_no_log_call_its_level_filters_out(level: str, logged: int) -> None:
    """Counted, not timed: at the entry point's ``info`` a sample's end reaches no logger
    method (the ``sample_done`` debug line cost a look-up through structlog's lazy proxy
    and a dict of arguments per sample, on the path of every request); at ``debug``
    each sample still logs it."""
    calls: list[str] = []
    structlog.configure(
        wrapper_class=_counting_logger(level, calls),
        processors=[structlog.processors.KeyValueRenderer()],
        logger_factory=structlog.ReturnLoggerFactory(),
    )
    with in_process_worker() as client:
        client.send(Hello(versions=PROTOCOL_VERSIONS, client="test"))
        assert isinstance(client.receive(), Welcome)
        for request_id in range(1, 21):
            client.send(Sample(id=request_id, seed=3, stream=request_id, points=0, kernel="numpy"))
            assert isinstance(client.receive(), Result)
    assert calls.count("sample_done") == logged, calls


@pytest.mark.parametrize(
    ("value", "niceness"),
    [(None, 19), ("0", 0), ("7", 7), ("19", 19), ("20", 19), ("-5", 19), ("", 19), ("low", 19), (" 3 ", 3)],
)
def test_the_warming_process_reads_its_niceness_from_the_environment(value: str | None, niceness: int) -> None:
    """``MCPI_WARM_NICENESS``: a whole number from 0 to 19, else the lowest priority."""
    from mcpi_worker.kernels.warm import niceness_wanted

    assert niceness_wanted(base_environment(MCPI_WARM_NICENESS=value)) == niceness
