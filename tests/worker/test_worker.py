"""The real ``mcpi-worker`` process, driven over its pipes.

Each test starts a worker with ``WorkerUnderTest`` (tests/worker_process.py), whose
every wait has a timeout, and kills it at the end whatever happened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from worker_process import TIMEOUT, EndOfOutput, WorkerUnderTest, control_peak_rss, worker_command

from mcpi_worker.kernels import KERNELS
from mcpi_worker.protocol import (
    HEADER,
    MAX_FRAME,
    MAX_POINTS,
    MAX_TEXT,
    NEED_DATA,
    Cancel,
    Error,
    ErrorCode,
    Hello,
    Ping,
    Pong,
    Result,
    Sample,
    Shutdown,
    encode,
)
from mcpi_worker.server import INLINE_MAX_POINTS

LONG = MAX_POINTS  # a request that would run for an hour: only ever cancelled


@pytest.fixture
def worker() -> Iterator[WorkerUnderTest]:
    process = WorkerUnderTest()
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture
def serving(worker: WorkerUnderTest) -> WorkerUnderTest:
    worker.handshake()
    return worker


def sample(request_id: int, points: int = 10_000, kernel: str = "numpy", **kw: int) -> Sample:
    return Sample(
        id=request_id, seed=kw.get("seed", 99), stream=kw.get("stream", 0), points=points,
        kernel=kernel,
    )  # fmt: skip


def start_long_sample(worker: WorkerUnderTest, request_id: int) -> None:
    """Send a sample that runs until cancelled, and know that the worker has taken it."""
    worker.send(sample(request_id, LONG))
    worker.send(Ping(request_id + 1000))
    assert worker.receive() == Pong(request_id + 1000)


def assert_cancelled(answer: object, request_id: int) -> None:
    # "before it started" or "before it finished": a pong for a later ping proves the
    # reader queued the sample, not that the compute thread has already taken it.
    assert isinstance(answer, Error), answer
    assert (answer.id, answer.code) == (request_id, ErrorCode.CANCELLED), answer


def fatal_exit(worker: WorkerUnderTest, code: ErrorCode) -> tuple[str, int]:
    """Assert the worker ended on fatal ``code``; return its stderr and peak RSS."""
    answer = worker.receive()
    assert isinstance(answer, Error) and answer.id is None and answer.code == code, answer
    with pytest.raises(EndOfOutput):
        worker.receive()
    exit_code, peak_rss = worker.wait_with_peak_rss()
    assert exit_code == 3
    stderr = worker.stderr_text()
    assert f"mcpi-worker: fatal protocol error: {code}" in stderr
    assert "Traceback" not in stderr
    return stderr, peak_rss


MEMORY_SLACK = 100 * 1024 * 1024
"""What a worker may use beyond an idle control worker (frames are capped at 1 MiB):
far above what it needs, far below the 4 GiB a hostile length asks for."""


# ------------------------------------------------------------------ serving


def test_handshake() -> None:
    worker = WorkerUnderTest("--max-inflight", "3")
    try:
        welcome = worker.handshake()
        assert welcome.version == 2 and welcome.jobs == 1
        assert welcome.worker.startswith("mcpi-worker/")
        assert welcome.pid == worker.pid
        assert welcome.kernels[0] == "numpy" and set(welcome.kernels) == set(KERNELS)
        assert (welcome.max_inflight, welcome.max_frame, welcome.max_points) == (
            3, MAX_FRAME, MAX_POINTS
        )  # fmt: skip
    finally:
        worker.kill()


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_sample_is_deterministic_and_streams_differ(serving: WorkerUnderTest, kernel: str) -> None:
    serving.send(sample(1, 50_000, kernel, stream=0))
    serving.send(sample(2, 50_000, kernel, stream=0))
    serving.send(sample(3, 50_000, kernel, stream=1))
    results = {r.id: r for r in serving.receive_many(3)}
    assert all(isinstance(r, Result) and r.points == 50_000 for r in results.values())
    assert results[1].inside == results[2].inside == KERNELS[kernel](99, 0, 50_000, bool)
    assert results[3].inside == KERNELS[kernel](99, 1, 50_000, bool) != results[1].inside
    assert results[1].elapsed_s >= 0


def test_pipelined_requests_are_answered_by_id(serving: WorkerUnderTest) -> None:
    for request_id in (10, 11, 12, 13):
        serving.send(sample(request_id, 20_000, stream=request_id))
    serving.send(Ping(14))
    answers = {a.id: a for a in serving.receive_many(5)}  # type: ignore[union-attr]
    assert answers[14] == Pong(14)
    for request_id in (10, 11, 12, 13):
        answer = answers[request_id]
        assert isinstance(answer, Result)
        assert answer.inside == KERNELS["numpy"](99, request_id, 20_000, bool)


def test_ping_is_answered_while_a_kernel_runs(serving: WorkerUnderTest) -> None:
    serving.send(sample(1, LONG))
    for request_id in (2, 3, 4):
        serving.send(Ping(request_id))
        assert serving.receive() == Pong(request_id)  # the sample is still running
    serving.send(Cancel(1))
    assert_cancelled(serving.receive(), 1)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_cancel_mid_computation(serving: WorkerUnderTest, kernel: str) -> None:
    serving.send(Sample(id=1, seed=1, stream=0, points=LONG, kernel=kernel))
    serving.send(Ping(2))
    assert serving.receive() == Pong(2)
    worker_cpu = psutil.Process(serving.pid)
    cancelled_at = time.perf_counter()
    serving.send(Cancel(1))
    answer = serving.receive()
    latency = time.perf_counter() - cancelled_at
    assert_cancelled(answer, 1)
    print(f"{kernel}: cancelled answered after {latency * 1e3:.1f} ms")
    # The worker is idle again: it answers and serves the next request.
    serving.send(sample(3, 1000))
    assert isinstance(serving.receive(), Result)
    assert worker_cpu.status() != psutil.STATUS_ZOMBIE


def test_cancel_of_a_queued_request_and_idempotence(serving: WorkerUnderTest) -> None:
    start_long_sample(serving, 1)
    serving.send(sample(2, LONG))
    serving.send(Cancel(2))  # queued: answered at once
    assert serving.receive() == Error(2, ErrorCode.CANCELLED, "cancelled before it started")
    serving.send(Cancel(2))  # already answered: nothing
    serving.send(Cancel(12345))  # never sent: nothing
    serving.assert_no_message()
    serving.send(Cancel(1))
    serving.send(Cancel(1))
    assert_cancelled(serving.receive(), 1)
    serving.assert_no_message()


def test_cancel_after_the_result_changes_nothing(serving: WorkerUnderTest) -> None:
    serving.send(sample(1, 1000))
    assert isinstance(serving.receive(), Result)
    serving.send(Cancel(1))
    serving.send(Ping(2))
    assert serving.receive() == Pong(2)


def test_busy_beyond_max_inflight() -> None:
    worker = WorkerUnderTest("--max-inflight", "2")
    try:
        worker.handshake()
        start_long_sample(worker, 1)
        worker.send(sample(2, LONG))
        worker.send(sample(3, 1000))
        busy = worker.receive()
        assert isinstance(busy, Error) and (busy.id, busy.code) == (3, ErrorCode.BUSY)
        assert busy.retryable
        worker.send(Ping(4))  # pings do not count toward max_inflight
        assert worker.receive() == Pong(4)
        worker.send(Cancel(2))
        assert worker.receive() == Error(2, ErrorCode.CANCELLED, "cancelled before it started")
        worker.send(sample(5, 1000))  # a slot is free again: queued behind request 1
        worker.send(Cancel(1))
        answers = {a.id: a for a in worker.receive_many(2)}  # type: ignore[union-attr]
        assert isinstance(answers[1], Error) and answers[1].code == ErrorCode.CANCELLED
        assert isinstance(answers[5], Result)
    finally:
        worker.kill()


def test_duplicate_id_is_refused_and_the_original_still_answered(serving: WorkerUnderTest) -> None:
    start_long_sample(serving, 1)
    serving.send(sample(1, 1000))
    duplicate = serving.receive()
    assert isinstance(duplicate, Error) and duplicate.code == ErrorCode.DUPLICATE_ID
    serving.send(Cancel(1))
    assert_cancelled(serving.receive(), 1)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"type": "sample", "id": 1, "seed": -1, "stream": 0, "points": 5, "kernel": "numpy"},
         ErrorCode.INVALID_REQUEST),
        ({"type": "sample", "id": 1, "seed": 1, "stream": 0, "points": True, "kernel": "numpy"},
         ErrorCode.INVALID_REQUEST),
        ({"type": "sample", "id": 1, "seed": 1, "stream": 0, "points": MAX_POINTS + 1,
          "kernel": "numpy"}, ErrorCode.INVALID_REQUEST),
        ({"type": "sample", "id": 1, "seed": 1, "stream": 0, "points": 5, "kernel": "cuda"},
         ErrorCode.UNKNOWN_KERNEL),
        ({"type": "sample", "id": 1, "seed": 1, "stream": 0}, ErrorCode.INVALID_REQUEST),
        ({"type": "launch_missiles", "id": 1}, ErrorCode.UNKNOWN_TYPE),
        ({"type": "result", "id": 1, "inside": 1, "points": 1, "elapsed_s": 0.1},
         ErrorCode.UNKNOWN_TYPE),
    ],
)  # fmt: skip
def test_invalid_request_is_answered_and_the_worker_keeps_serving(
    serving: WorkerUnderTest, body: dict, code: ErrorCode
) -> None:
    import msgpack

    payload = msgpack.packb(body)
    serving.send_bytes(HEADER.pack(len(payload)) + payload)
    answer = serving.receive()
    assert isinstance(answer, Error) and (answer.id, answer.code) == (1, code), answer
    assert not answer.fatal
    serving.send(sample(2, 1000))
    assert isinstance(serving.receive(), Result)


def test_requests_before_hello_need_the_handshake(worker: WorkerUnderTest) -> None:
    worker.send(sample(1))
    worker.send(Ping(2))
    worker.send(Cancel(1))  # a notification: ignored, no answer
    assert worker.receive_many(2) == [
        Error(1, ErrorCode.HANDSHAKE_REQUIRED, "send hello first"),
        Error(2, ErrorCode.HANDSHAKE_REQUIRED, "send hello first"),
    ]
    worker.handshake()
    worker.send(sample(3, 1000))
    assert isinstance(worker.receive(), Result)


# ------------------------------------------------------------------ orderly ends


def test_eof_answers_everything_outstanding_and_exits_0(serving: WorkerUnderTest) -> None:
    start_long_sample(serving, 1)
    serving.send(sample(2, LONG))
    serving.close_stdin()
    answers = {a.id: a for a in serving.receive_many(2)}  # type: ignore[union-attr]
    assert {a.code for a in answers.values()} == {ErrorCode.CANCELLED}  # type: ignore[union-attr]
    with pytest.raises(EndOfOutput):
        serving.receive()
    assert serving.wait() == 0
    assert "Traceback" not in serving.stderr_text()


def test_eof_before_hello_exits_0(worker: WorkerUnderTest) -> None:
    worker.close_stdin()
    assert worker.wait() == 0


def test_shutdown_answers_everything_outstanding_and_exits_0(serving: WorkerUnderTest) -> None:
    start_long_sample(serving, 1)
    serving.send(sample(2, LONG))
    serving.send(Shutdown())
    answers = serving.receive_many(2)
    assert sorted(a.id for a in answers) == [1, 2]  # type: ignore[union-attr]
    assert all(isinstance(a, Error) and a.code == ErrorCode.CANCELLED for a in answers)
    assert serving.wait() == 0  # stdin is still open: shutdown alone is enough


def test_closed_stdout_ends_the_worker_quietly() -> None:
    proc = subprocess.Popen(
        worker_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdout.close()  # nobody will ever read the responses
        proc.stdin.write(encode(Hello(versions=(1,), client="tests")) + encode(sample(1, LONG)))
        proc.stdin.flush()
        # stdin stays open until the worker has gone: an end of input read before its first
        # write failed would end it in order too, without noticing that nobody reads.
        assert proc.wait(timeout=TIMEOUT) == 0
        _, stderr = proc.communicate(timeout=TIMEOUT)
        assert b"Traceback" not in stderr and b"response stream closed" in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------ fatal ends


def test_text_instead_of_frames_is_fatal(worker: WorkerUnderTest) -> None:
    worker.send_bytes(b"hello world\n")
    fatal_exit(worker, ErrorCode.FRAME_TOO_LARGE)


def test_4_gib_length_prefix_is_fatal_with_bounded_memory(serving: WorkerUnderTest) -> None:
    serving.send_bytes(b"\xff\xff\xff\xff" + b"x" * 65536)
    _, peak_rss = fatal_exit(serving, ErrorCode.FRAME_TOO_LARGE)
    assert peak_rss < control_peak_rss() + MEMORY_SLACK


def test_eof_inside_a_frame_is_fatal_and_memory_stays_bounded(serving: WorkerUnderTest) -> None:
    # Announce the largest legal frame and send most of it: the worker may buffer it.
    serving.send_bytes(HEADER.pack(MAX_FRAME) + b"\x00" * (MAX_FRAME - 100))
    serving.send(Ping(1))  # these bytes just continue the announced frame
    serving.close_stdin()
    _, peak_rss = fatal_exit(serving, ErrorCode.TRUNCATED_FRAME)
    assert peak_rss < control_peak_rss() + MEMORY_SLACK


def test_malformed_body_is_fatal(serving: WorkerUnderTest) -> None:
    serving.send_bytes(HEADER.pack(3) + b"\x93\x01\x02")  # an array, not a map
    fatal_exit(serving, ErrorCode.MALFORMED_FRAME)


def test_request_without_a_usable_id_is_fatal(serving: WorkerUnderTest) -> None:
    import msgpack

    payload = msgpack.packb({"type": "sample", "id": "seven"})
    serving.send_bytes(HEADER.pack(len(payload)) + payload)
    fatal_exit(serving, ErrorCode.INVALID_REQUEST)


def test_unsupported_version_is_fatal(worker: WorkerUnderTest) -> None:
    worker.send(Hello(versions=(3, 4), client="from the future"))
    fatal_exit(worker, ErrorCode.UNSUPPORTED_VERSION)


def test_fatal_error_mid_computation_stops_it(serving: WorkerUnderTest) -> None:
    start_long_sample(serving, 1)
    serving.send_bytes(HEADER.pack(0))
    fatal_exit(serving, ErrorCode.MALFORMED_FRAME)  # nothing after the fatal error


# ------------------------------------------------------------------ hygiene


def test_stray_output_never_reaches_the_protocol_stream() -> None:
    worker = WorkerUnderTest("--test-stray-output")
    try:
        worker.handshake()
        worker.send(sample(1, 1000))
        assert isinstance(worker.receive(), Result)
        worker.close_stdin()
        with pytest.raises(EndOfOutput):
            worker.receive()  # the decoder saw only whole, valid frames to the end
        assert worker.wait() == 0
        stderr = worker.stderr_text()
        for line in ("stray print before request 1", "stray raw write to fd 1",
                     "stray output from a child process"):  # fmt: skip
            assert line in stderr
        assert b"stray" not in worker.raw_stdout
    finally:
        worker.kill()


def test_stderr_is_json_lines(serving: WorkerUnderTest) -> None:
    serving.close_stdin()
    assert serving.wait() == 0
    records = [json.loads(line) for line in serving.stderr_text().splitlines()]
    assert {"worker_started", "handshake", "worker_exiting"} <= {r["event"] for r in records}
    for record in records:
        assert {"event", "level", "timestamp", "pid"} <= set(record)
        assert record["pid"] == serving.pid
        assert record["timestamp"].endswith("Z")


def test_console_log_format_and_level() -> None:
    worker = WorkerUnderTest("--log-format", "console", "--log-level", "debug")
    try:
        worker.handshake()
        worker.send(sample(1, 1000))
        assert isinstance(worker.receive(), Result)
        worker.close_stdin()
        assert worker.wait() == 0
        lines = worker.stderr_text().splitlines()
        assert any("worker_started" in line and not line.startswith("{") for line in lines)
        assert any("sample_done" in line for line in lines)  # a debug event
    finally:
        worker.kill()
    quiet = WorkerUnderTest("--log-level", "warning")
    try:
        quiet.close_stdin()
        assert quiet.wait() == 0
        assert quiet.stderr_text() == ""
    finally:
        quiet.kill()


def test_a_failing_kernel_fails_one_request_and_the_worker_goes_on() -> None:
    """In-process: ``Worker`` over OS pipes, with a kernel injected through its parameters."""
    from mcpi_worker.protocol import WORKER_MESSAGES, FrameDecoder
    from mcpi_worker.server import ExitCode, Worker

    def broken(seed: int, stream: int, points: int, should_stop: object) -> int:
        raise ZeroDivisionError("kernel bug")

    request_read, request_write = os.pipe()
    response_read, response_write = os.pipe()
    worker = Worker(
        request_read, response_write, kernels={"broken": broken, "numpy": KERNELS["numpy"]}
    )
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(worker.serve()), daemon=True)
    thread.start()
    requests = [Hello(versions=(1,), client="t"), sample(1, 10, "broken"), sample(2, 1000)]
    os.write(request_write, b"".join(encode(m) for m in requests))
    decoder = FrameDecoder(WORKER_MESSAGES)
    answers: list[object] = []
    while len(answers) < 3:
        decoder.feed(os.read(response_read, 65536))
        while (message := decoder.next_message()) is not NEED_DATA:
            answers.append(message)
    os.close(request_write)  # end of input: the worker ends in order
    thread.join(TIMEOUT)
    assert outcome and outcome[0].exit_code == ExitCode.OK  # type: ignore[attr-defined]
    _, failed, result = answers
    assert failed == Error(1, ErrorCode.INTERNAL, "ZeroDivisionError: kernel bug")
    assert failed.retryable  # type: ignore[attr-defined]
    assert isinstance(result, Result) and result.id == 2
    for fd in (request_read, response_read, response_write):
        os.close(fd)


def test_sigint_is_left_to_the_coordinator(serving: WorkerUnderTest) -> None:
    serving.proc.send_signal(signal.SIGINT)
    serving.send(Ping(1))
    assert serving.receive() == Pong(1)


def test_sigterm_ends_the_worker(serving: WorkerUnderTest) -> None:
    start_long_sample(serving, 1)
    serving.proc.terminate()
    assert serving.wait() == -signal.SIGTERM


@pytest.mark.slow
def test_worker_package_imports_no_trio() -> None:
    code = textwrap.dedent(
        """
        import pkgutil, importlib, sys
        import mcpi_worker
        for module in pkgutil.iter_modules(mcpi_worker.__path__):
            if module.name != "__main__":
                importlib.import_module("mcpi_worker." + module.name)
        print(sorted(m for m in sys.modules if m.split(".")[0] == "trio"))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    importtime = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mcpi_worker", "--version"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    imported = [line.rsplit("|", 1)[-1].strip() for line in importtime.stderr.splitlines()]
    assert "mcpi_worker.main" in imported
    assert not [name for name in imported if name.split(".")[0] == "trio"]


# ------------------------------------------------------------------ command line


@pytest.mark.slow
def test_self_check() -> None:
    done = subprocess.run(
        [*worker_command(), "--self-check"], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "OK"
    assert "cancel" in done.stdout and "pi ~ 3.1" in done.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--max-inflight", "0"],
        ["--max-inflight", "many"],
        ["--spin-us", "-1"],
        ["--spin-us", "10001"],
        ["--log-level", "loud"],
        ["--bogus"],
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str]) -> None:
    done = subprocess.run(
        [*worker_command(), *args], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("mcpi-worker: error:")


@pytest.mark.slow
def test_help_and_version_go_to_stdout() -> None:
    done = subprocess.run([*worker_command(), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--max-inflight" in done.stdout and "exit codes" in done.stdout
    assert "--test-stray-output" not in done.stdout
    done = subprocess.run([*worker_command(), "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("mcpi-worker ")


# ------------------------------------------------------------------ parent death

# An intermediate parent that starts a worker whose stdin it does NOT own (the test
# holds the pipe open), so only the parent-death signal can end the worker. It waits
# for the worker's "worker_started" log line (logged after prctl) before reporting the
# worker's pid. With "thread", the worker is spawned from a thread that exits after
# that, as Trio's thread cache does: the worker must outlive the thread.
INTERMEDIATE = textwrap.dedent(
    """
    import subprocess, sys, threading, time
    command, stdin_fd, mode = sys.argv[1:-2], int(sys.argv[-2]), sys.argv[-1]
    started = []
    def spawn():
        worker = subprocess.Popen(command, stdin=stdin_fd, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, pass_fds=[stdin_fd])
        for line in worker.stderr:
            if b"worker_started" in line:
                break
        started.append(worker)
    if mode == "thread":
        thread = threading.Thread(target=spawn)
        thread.start()
        thread.join()
    else:
        spawn()
    print(started[0].pid, flush=True)
    time.sleep(600)
    """
)


def spawn_through_intermediate(
    mode: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], psutil.Process, int]:
    read_fd, write_fd = os.pipe()
    parent = subprocess.Popen(
        [sys.executable, "-c", INTERMEDIATE, *worker_command(), str(read_fd), mode],
        stdout=subprocess.PIPE, text=True, pass_fds=[read_fd], env=env,
    )  # fmt: skip
    os.close(read_fd)
    assert parent.stdout is not None
    worker = psutil.Process(int(parent.stdout.readline()))
    return parent, worker, write_fd


def assert_exits(process: psutil.Process) -> None:
    """Wait for a process that is not our child (so its exit code is not ours to read)."""
    process.wait(TIMEOUT)
    assert not process.is_running()


def assert_gone_with_its_parent(
    parent: subprocess.Popen[str], worker: psutil.Process, stdin_write: int, first: Callable[[], None] = lambda: None
) -> None:
    """Do ``first``, SIGKILL ``parent`` and check in the process table that ``worker`` is
    gone; whatever happens, close our end of its stdin and kill what is left."""
    try:
        first()
        parent.kill()
        parent.wait(TIMEOUT)
        assert_exits(worker)
    finally:
        os.close(stdin_write)
        if worker.is_running():
            worker.kill()


@pytest.mark.slow
def test_worker_exits_when_its_parent_dies() -> None:
    assert_gone_with_its_parent(*spawn_through_intermediate("main"))


@pytest.mark.slow
def test_worker_survives_the_exit_of_the_thread_that_spawned_it() -> None:
    parent, worker, stdin_write = spawn_through_intermediate("thread")

    def still_there() -> None:
        time.sleep(0.5)  # the spawning thread has exited; its death signal has come
        assert worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE

    assert_gone_with_its_parent(parent, worker, stdin_write, still_there)


HANDLER_NEVER_RUNS = """
import signal
# The end state of the race: the parent-death signal's Python handler never runs. Linux
# signals a child at each re-parenting (to another thread of the dying parent, then to
# init); a second signal that came while the first's handler ran was left for the main
# thread's next line of Python, which a main thread waiting in C never ran. Blocked here in
# every thread, from before the worker arms its backstop, so that it is certain.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
"""
"""A ``sitecustomize`` for the worker: no SIGUSR1 handler of its will ever run."""

NO_PIDFD_OPEN = """
import os
del os.pidfd_open  # conda's Pythons, built against older kernel headers, have none
"""
"""A ``sitecustomize`` for the worker: a Python without ``os.pidfd_open``."""


def _with_sitecustomize(directory: Path, text: str) -> dict[str, str]:
    """The environment of a Python that runs ``text`` as its ``sitecustomize`` first."""
    (directory / "sitecustomize.py").write_text(text, encoding="utf-8")
    return {**os.environ, "PYTHONPATH": str(directory)}


def _wait_counting(worker: psutil.Process, stdin_write: int) -> None:
    """Give ``worker`` a sample that takes hours and wait until it has spent CPU on it,
    so that its main thread (the one that called ``serve``) is inside the kernel."""
    before = sum(worker.cpu_times()[:2])
    os.write(stdin_write, encode(Hello(versions=(1,), client="t")) + encode(sample(1, MAX_POINTS)))
    deadline = time.monotonic() + TIMEOUT
    while sum(worker.cpu_times()[:2]) < before + 0.2:
        assert time.monotonic() < deadline, "the worker never counted"
        time.sleep(0.01)


@pytest.mark.slow
@pytest.mark.parametrize("main_thread", ["waiting", "counting"])
def test_a_worker_whose_handler_never_runs_dies_with_its_multithreaded_parent(tmp_path: Path, main_thread: str) -> None:
    """A parent with several threads that did not ask for SIGKILL (Trio's ``open_process``
    spawns from a passing thread), someone else holding the worker's stdin open (a
    launcher that stays, ssh, srun), the parent SIGKILLed: the worker is gone, whether its
    main thread waits for work (``sem_wait`` on its queue) or counts, without its
    parent-death signal's handler ever running. Before, that handler was the only way
    out: the worker outlived its parent for good (here every time; by the race, when a
    second signal came while the first's handler ran)."""
    parent, worker, stdin_write = spawn_through_intermediate(
        "thread", env=_with_sitecustomize(tmp_path, HANDLER_NEVER_RUNS)
    )

    def busy_as_asked() -> None:
        if main_thread == "counting":
            _wait_counting(worker, stdin_write)

    assert_gone_with_its_parent(parent, worker, stdin_write, busy_as_asked)


@pytest.mark.slow
def test_a_worker_on_a_python_without_pidfd_open_still_dies_with_its_multithreaded_parent(tmp_path: Path) -> None:
    """Without ``os.pidfd_open`` (conda's Pythons) the worker falls back on SIGUSR1 and its
    handler, which ends it once its parent has gone, as before pidfds were used."""
    assert_gone_with_its_parent(*spawn_through_intermediate("thread", env=_with_sitecustomize(tmp_path, NO_PIDFD_OPEN)))


# ------------------------------------------------------------------ hot path (in-process)


def _serve_in_process(
    output_fd: int, **options: object
) -> tuple[int, threading.Thread, list[object]]:
    """A ``Worker`` on a thread: returns the fd to write requests to, the thread, and
    the list its ``ConnectionEnded`` lands in."""
    from mcpi_worker.server import Worker

    request_read, request_write = os.pipe()
    worker = Worker(request_read, output_fd, **options)  # type: ignore[arg-type]
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(worker.serve()), daemon=True)
    thread.start()
    return request_write, thread, outcome


def test_small_samples_run_on_the_reader_thread_and_large_ones_on_the_compute_thread() -> None:
    """A tiny sample is computed where it was read: handing it to another thread
    would cost more than the kernel (benchmarks/thread_handoff.py)."""
    from mcpi_worker.protocol import WORKER_MESSAGES, FrameDecoder
    from mcpi_worker.server import INLINE_MAX_POINTS

    computed_on: dict[int, str] = {}
    response_read, response_write = os.pipe()
    request_write, thread, _ = _serve_in_process(
        response_write,
        on_sample=lambda request: computed_on.setdefault(request.id, threading.current_thread().name),
    )
    decoder = FrameDecoder(WORKER_MESSAGES)

    def ask(message: object) -> object:
        os.write(request_write, encode(message))  # type: ignore[arg-type]
        while (answer := decoder.next_message()) is NEED_DATA:
            decoder.feed(os.read(response_read, 65536))
        return answer

    ask(Hello(versions=(1,), client="t"))
    small, large = ask(sample(1, INLINE_MAX_POINTS)), ask(sample(2, INLINE_MAX_POINTS + 1))
    assert isinstance(small, Result) and small.inside == KERNELS["numpy"](99, 0, INLINE_MAX_POINTS)
    assert isinstance(large, Result) and large.inside == KERNELS["numpy"](99, 0, INLINE_MAX_POINTS + 1)
    assert computed_on[1] == "mcpi-reader"
    assert computed_on[2] == thread.name  # the compute loop runs on the thread that called serve()
    os.close(request_write)
    thread.join(TIMEOUT)
    for fd in (response_read, response_write):
        os.close(fd)


def test_a_burst_of_requests_is_answered_in_two_writes() -> None:
    """Each write wakes the coordinator: the answers to one read go out together, in
    two writes at most: what is answered at once (pongs) first, so that no ping waits
    for the burst's samples, then the results of the small samples computed on the
    reader. A SEQPACKET socket keeps write boundaries, so each ``recv`` is one ``write``."""
    import socket

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # No time limit on holding: the test must not depend on this machine's speed.
    request_write, thread, outcome = _serve_in_process(theirs.fileno(), hold_limit_s=60.0)
    os.write(request_write, encode(Hello(versions=(1,), client="t")))
    welcome = ours.recv(65536)
    burst = [Ping(i) for i in range(1, 11)] + [sample(i, 1000) for i in range(11, 21)]
    os.write(request_write, b"".join(encode(m) for m in burst))  # one write: one read
    pongs, results = ours.recv(65536), ours.recv(65536)
    from mcpi_worker.protocol import WORKER_MESSAGES, FrameDecoder

    def messages(packet: bytes) -> list[Any]:
        decoder = FrameDecoder(WORKER_MESSAGES)
        decoder.feed(packet)
        found = []
        while (answer := decoder.next_message()) is not NEED_DATA:
            found.append(answer)
        assert decoder.at_frame_boundary
        return found

    assert [m.TYPE for m in messages(welcome)] == ["welcome"]
    assert [(m.TYPE, m.id) for m in messages(pongs)] == [("pong", i) for i in range(1, 11)]
    assert sorted((m.TYPE, m.id) for m in messages(results)) == [("result", i) for i in range(11, 21)]
    os.close(request_write)
    thread.join(TIMEOUT)
    assert outcome
    ours.close()
    theirs.close()


def _burst_then(what: bytes | None) -> tuple[list[Any], list[object]]:
    """20 small samples in one write to an in-process worker; as the first is about to
    run, ``what`` is written (None: the request stream is closed). Returns every answer
    and what ``serve`` returned."""
    from mcpi_worker.protocol import WORKER_MESSAGES, FrameDecoder

    response_read, response_write = os.pipe()
    pipe: list[int] = []

    def on_sample(request: Sample) -> None:
        if request.id == 1:  # between the burst's read and its second sample
            if what is None:
                os.close(pipe[0])
            else:
                os.write(pipe[0], what)

    request_write, thread, outcome = _serve_in_process(response_write, on_sample=on_sample)
    pipe.append(request_write)
    os.write(request_write, encode(Hello(versions=(1,), client="t")))
    os.write(request_write, b"".join(encode(sample(i, 1000)) for i in range(1, 21)))
    decoder = FrameDecoder(WORKER_MESSAGES)
    answers: list[Any] = []
    while len(answers) < 21:  # the welcome, then one final answer per sample
        while (answer := decoder.next_message()) is NEED_DATA:
            decoder.feed(os.read(response_read, 65536))
        answers.append(answer)
    if what is not None:
        os.close(request_write)
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    for fd in (response_read, response_write):
        os.close(fd)
    return answers[1:], outcome


class _ReaderWaitsOnceEnded:
    """A ``Worker`` lock (its ``lock`` seam) that, once the connection has ended, holds the
    reader thread back after each release until ``serve`` has returned: the interleaving in
    which the thread that runs ``serve`` takes the lock before the reader takes it again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ended: Callable[[], bool] = lambda: False
        self.serve_returned = threading.Event()

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc_info: object) -> None:
        ended = self.ended()  # read while held, as the worker's own reads are
        self._lock.release()
        if ended and threading.current_thread().name == "mcpi-reader":
            self.serve_returned.wait(TIMEOUT)


def test_a_small_sample_that_ends_the_connection_is_answered_before_serve_returns() -> None:
    """One 0-point sample, then the end of input: the reader sees the end before it runs
    the sample, whose answer then closes the connection with the answer held for the
    reader's next hold. Once ``serve`` returns the process exits and the reader thread
    dies, so the answer must be written by then, whichever thread takes the lock first."""
    from mcpi_worker.protocol import WORKER_MESSAGES, FrameDecoder
    from mcpi_worker.server import Worker

    lock = _ReaderWaitsOnceEnded()
    request_read, request_write = os.pipe()
    response_read, response_write = os.pipe()
    worker = Worker(request_read, response_write, jobs=1, spin_s=0, lock=lock)
    lock.ended = lambda: worker._worker_end.end is not None
    os.write(request_write, encode(Hello(versions=(1,), client="t")) + encode(sample(0, 0)))
    os.close(request_write)  # the sample and the end of input wait together
    outcome: list[object] = []
    serving = threading.Thread(target=lambda: outcome.append(worker.serve()), daemon=True)
    serving.start()
    serving.join(TIMEOUT)
    assert not serving.is_alive()
    os.set_blocking(response_read, False)
    written = bytearray()
    try:
        while piece := os.read(response_read, 65536):  # what was written by serve's return
            written += piece
    except BlockingIOError:
        pass
    lock.serve_returned.set()
    for thread in threading.enumerate():
        if thread.name == "mcpi-reader":
            thread.join(TIMEOUT)
    for fd in (request_read, response_read, response_write):
        os.close(fd)
    decoder = FrameDecoder(WORKER_MESSAGES)
    decoder.feed(bytes(written))
    answers = []
    while (answer := decoder.next_message()) is not NEED_DATA:
        answers.append(answer)
    assert [type(m).__name__ for m in answers[1:]] == ["Result"], answers
    assert [getattr(ended, "exit_code", None) for ended in outcome] == [0]


def test_a_cancel_inside_a_burst_of_small_samples_ends_each_one_once() -> None:
    """Input is read before each small sample the reader runs: cancels that arrive
    while the burst's first one runs are acted on before the second, so the samples
    still queued are answered ``cancelled`` at once, and every sample gets exactly
    one final answer."""
    answers, _ = _burst_then(b"".join(encode(Cancel(i)) for i in range(5, 21)))
    assert sorted(m.id for m in answers) == list(range(1, 21))
    by_id = {m.id: m for m in answers}
    assert all(isinstance(by_id[i], Result) for i in range(1, 5)), answers
    assert all(isinstance(by_id[i], Error) and by_id[i].code == ErrorCode.CANCELLED for i in range(5, 21))


def test_the_end_of_input_inside_a_burst_of_small_samples_ends_each_one_once() -> None:
    """The request stream closing while the burst's first sample runs is seen before
    the second: that one finishes, the queued ones are answered ``cancelled``, and the
    worker exits 0."""
    answers, outcome = _burst_then(None)
    assert sorted(m.id for m in answers) == list(range(1, 21))
    assert isinstance(answers[0], Result) and answers[0].id == 1
    assert all(isinstance(m, Error) and m.code == ErrorCode.CANCELLED for m in answers[1:])
    assert [getattr(ended, "exit_code", None) for ended in outcome] == [0]


@pytest.mark.parametrize("spin_us", ["0", "10000"])
def test_a_worker_serves_alike_whether_it_sleeps_at_once_or_polls_first(spin_us: str) -> None:
    worker = WorkerUnderTest("--spin-us", spin_us)
    worker.handshake()
    worker.send(sample(1, 1000))
    worker.send(Ping(2))
    answers = {worker.receive().id: None for _ in range(2)}  # type: ignore[attr-defined]
    assert set(answers) == {1, 2}
    worker.close_stdin()
    assert worker.wait() == 0


def test_a_ping_after_a_burst_of_small_samples_waits_for_none_of_them(serving: WorkerUnderTest) -> None:
    """20 small python-kernel samples and a ping in one write: the samples used to run
    one after another on the reader, the pong coming ~300 ms later, behind all of them.
    The pong must come first (protocol.md §6: behind at most one small sample)."""
    burst = [sample(i, INLINE_MAX_POINTS, kernel="python") for i in range(1, 21)] + [Ping(21)]
    serving.send_bytes(b"".join(encode(m) for m in burst))
    answers = serving.receive_many(21)
    assert [getattr(m, "id", None) for m in answers[:2]].count(21) == 1, answers[:2]
    assert isinstance(answers[0], Pong) or isinstance(answers[1], Pong)
    assert sorted(m.id for m in answers) == list(range(1, 22))  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "body",
    [
        {"type": "\x00" * 300_000, "id": 5},
        {"type": "x" * 1_000_000, "id": 5},
        {"type": "sample", "id": 5, "seed": 1, "stream": 0, "points": 10, "kernel": "k" * MAX_TEXT},
        {"type": "sample", "id": 5, "seed": "\x00" * 300_000, "stream": 0, "points": 10, "kernel": "numpy"},
    ],
    ids=["nul-type", "1MB-type", "4096-char-kernel", "huge-bad-field"],
)
def test_a_huge_value_gets_a_bounded_error_and_the_worker_goes_on(
    serving: WorkerUnderTest, body: dict[str, object]
) -> None:
    """Error messages quoted the peer's value whole: a 300,000-character type made a
    1.2 MB error frame the worker refused to send, and it died with a traceback."""
    import msgpack

    payload = msgpack.packb(body)
    serving.send_bytes(HEADER.pack(len(payload)) + payload)
    answer = serving.receive()
    assert isinstance(answer, Error) and answer.id == 5
    assert len(answer.message) <= MAX_TEXT and len(answer.message) < 200
    serving.send(Ping(6))
    assert serving.receive() == Pong(6)  # still serving


# ------------------------------------------------------------------ version 2


def test_a_range_needs_version_2_and_stays_within_the_limits() -> None:
    v1 = WorkerUnderTest()
    try:
        v1.send(Hello(versions=(1,), client="old"))
        assert v1.receive().version == 1  # type: ignore[union-attr]
        v1.send(Sample(1, 99, 0, 10, "numpy", streams=3))
        answer = v1.receive()
        assert isinstance(answer, Error) and answer.code == ErrorCode.INVALID_REQUEST
        assert "need protocol version 2" in answer.message
    finally:
        v1.kill()
    v2 = WorkerUnderTest()
    try:
        assert v2.handshake().version == 2
        for request, why in [
            (Sample(2, 99, 2**64 - 2, 10, "numpy", streams=3), "past 2**64-1"),
            (Sample(3, 99, 0, MAX_POINTS, "numpy", streams=2), "above this worker's max_points"),
            (Sample(4, 99, 0, 1, "numpy", streams=5000, group=1), "above the limit of 4096"),
        ]:
            v2.send(request)
            answer = v2.receive()
            assert isinstance(answer, Error) and answer.code == ErrorCode.INVALID_REQUEST, answer
            assert why in answer.message
        v2.send(Sample(5, 99, 7, 1000, "numpy", streams=5, group=2))
        result = v2.receive()
        singles = [KERNELS["numpy"](99, s, 1000) for s in range(7, 12)]
        assert isinstance(result, Result)
        assert (result.id, result.inside, result.points, result.insides) == (
            5, sum(singles), 5000, (singles[0] + singles[1], singles[2] + singles[3], singles[4])
        )  # fmt: skip
        assert result.implementation in ("numpy", "numba-fused")
    finally:
        v2.kill()


def test_jobs_run_that_many_samples_at_once() -> None:
    """Two long samples on --jobs 2 are both running: cancelled, each says it had not
    finished (a queued one would say it had not started)."""
    worker = WorkerUnderTest("--jobs", "2")
    try:
        assert worker.handshake().jobs == 2
        worker.send(sample(1, LONG))
        worker.send(sample(2, LONG))
        worker.send(Ping(3))
        assert worker.receive() == Pong(3)
        worker.send(Cancel(1))
        worker.send(Cancel(2))
        answers = {m.id: m for m in worker.receive_many(2)}  # type: ignore[union-attr]
        for request_id in (1, 2):
            answer = answers[request_id]
            assert isinstance(answer, Error) and answer.message == "cancelled before it finished"
    finally:
        worker.kill()


def test_jobs_auto_is_the_cpus_this_process_may_use() -> None:
    from mcpi_worker.cpus import usable_cpus

    worker = WorkerUnderTest("--jobs", "auto")
    try:
        assert worker.handshake().jobs == usable_cpus()
    finally:
        worker.kill()
    pinned = WorkerUnderTest("--jobs", "auto", env={"SLURM_CPUS_PER_TASK": "1"})
    try:
        assert pinned.handshake().jobs == 1
    finally:
        pinned.kill()
