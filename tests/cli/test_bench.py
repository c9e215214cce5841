"""mcpi bench: every approach counts the same chunks to the same total, and the CLI's
outputs (table, --json, --plot, unavailable peers, failures) are what users rely on.

Speed is never asserted here (benchmarks/ measures it); these tests check correctness
with small workloads, with real mcpi-worker processes where an approach uses them.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from mcpi_coordinator.bench import approaches, overhead, report
from mcpi_coordinator.bench.measure import Measurement, Run
from mcpi_coordinator.bench.one_shot import OneShotError, OneShotExchange
from mcpi_coordinator.bench.tasks import count_chunk
from mcpi_coordinator.bench.workload import Workload
from mcpi_coordinator.cli.main import main
from mcpi_coordinator.launch.local import default_worker_command
from mcpi_coordinator.testing.processes import workers_among
from mcpi_worker import protocol

SEED = 20240601
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _workload(kernel: str, points: int, chunk_size: int, workers: int = 2) -> Workload:
    return Workload(
        points=points,
        seed=SEED,
        kernel=kernel,
        chunk_size=chunk_size,
        workers=workers,
        worker_command=tuple(default_worker_command()),
    )


def _expected_inside(workload: Workload) -> int:
    return sum(
        count_chunk(workload.kernel, workload.seed, chunk.stream, chunk.points)
        for chunk in workload.chunks()
    )


def _run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _run_cli_subprocess(prelude: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    """``mcpi`` in a fresh interpreter after ``prelude`` ran: how we simulate a missing
    optional package (``sys.modules[name] = None`` makes its import fail)."""
    script = f"import sys\n{prelude}\nfrom mcpi_coordinator.cli.main import main\nsys.exit(main({args!r}))"
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )


# ------------------------------------------------------------------ the approaches


# Three chunks, the last one short: the chunking is estimate's own, remainder included.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("kernel", "points", "chunk_size"), [("numpy", 250_000, 100_000), ("python", 25_000, 10_000)]
)
def test_every_approach_counts_the_same_chunks_to_the_same_total(
    kernel: str, points: int, chunk_size: int
) -> None:
    workload = _workload(kernel, points, chunk_size)
    expected = _expected_inside(workload)
    for name, measure in approaches.APPROACHES.items():
        measurement = measure(workload, 2)
        assert measurement.approach == name
        assert [run.inside for run in measurement.runs] == [expected, expected], name


def test_persistent_pools_report_their_start_up_and_per_chunk_ones_do_not() -> None:
    workload = _workload("numpy", 20_000, 10_000, workers=1)
    assert approaches.APPROACHES["trio-pool"](workload, 1).startup_s is not None
    assert approaches.APPROACHES["trio-run-process"](workload, 1).startup_s is None


def test_disagreeing_counts_are_found_and_named() -> None:
    agreeing = [Measurement("a", None, (Run(1.0, 7), Run(1.1, 7))), Measurement("b", 0.1, (Run(2.0, 7),))]
    assert report.disagreement(agreeing) is None
    split = [*agreeing, Measurement("c", None, (Run(1.0, 8),))]
    problem = report.disagreement(split)
    assert problem is not None
    assert "c counted 8" in str(problem) and "a counted 7" in str(problem)


def test_rows_give_median_wall_speedup_against_sequential_and_pi() -> None:
    workload = _workload("numpy", 1000, 1000)
    rows = report.rows(
        workload,
        [
            Measurement("sequential", None, (Run(4.0, 785), Run(2.0, 785), Run(3.0, 785))),
            Measurement("trio-pool", 0.3, (Run(1.0, 785),)),
        ],
    )
    assert [row.wall_s for row in rows] == [3.0, 1.0]
    assert [row.speedup for row in rows] == [1.0, 3.0]
    assert rows[1].points_per_s == 1000.0
    assert rows[1].pi == 4 * 785 / 1000


# ------------------------------------------------------------------ one-shot exchange


def _worker_bytes(*messages: protocol.Message) -> bytes:
    return b"".join(protocol.encode(m) for m in messages)


WELCOME = protocol.Welcome(1, "w", 1, "h", ("numpy",), 4, protocol.MAX_FRAME, protocol.MAX_POINTS)


def _sent(exchange: OneShotExchange) -> list[object]:
    decoder = protocol.FrameDecoder(protocol.COORDINATOR_MESSAGES)
    decoder.feed(exchange.data_to_send())
    messages = []
    while (message := decoder.next_message()) is not protocol.NEED_DATA:
        messages.append(message)
    return messages


def test_one_shot_exchange_says_hello_then_sample_then_shutdown_and_reads_bytewise() -> None:
    exchange = OneShotExchange(seed=5, stream=3, points=100, kernel="numpy")
    assert _sent(exchange) == [protocol.Hello(protocol.PROTOCOL_VERSIONS, "mcpi-bench")]
    welcome = _worker_bytes(WELCOME)
    assert [exchange.receive(welcome[i : i + 1]) for i in range(len(welcome))] == [None] * len(welcome)
    assert _sent(exchange) == [protocol.Sample(id=1, seed=5, stream=3, points=100, kernel="numpy")]
    answer = _worker_bytes(protocol.Result(1, 77, 100, 0.001))
    counts = [exchange.receive(answer[i : i + 1]) for i in range(len(answer))]
    assert counts[-1] == 77 and set(counts[:-1]) == {None}
    assert _sent(exchange) == [protocol.Shutdown()]


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (_worker_bytes(protocol.Error(1, "unknown_kernel", "no such kernel")), "unknown_kernel"),
        (_worker_bytes(protocol.Result(9, 1, 100, 0.0)), "id 9, which is not in flight"),
        (_worker_bytes(protocol.Result(1, 1, 99, 0.0)), "answered 99 points"),
        (_worker_bytes(protocol.Result(1, 101, 100, 0.0)), "counted 101 inside"),
        (_worker_bytes(protocol.Pong(1)), "with a pong"),
        (b"hello world\n", "broke the protocol"),
    ],
)
def test_one_shot_exchange_rejects_anything_but_welcome_then_result(reply: bytes, message: str) -> None:
    exchange = OneShotExchange(seed=5, stream=3, points=100, kernel="numpy")
    exchange.receive(_worker_bytes(WELCOME))
    with pytest.raises(OneShotError, match=message):
        exchange.receive(reply)


def test_one_shot_exchange_wants_the_welcome_first() -> None:
    exchange = OneShotExchange(seed=5, stream=3, points=100, kernel="numpy")
    with pytest.raises(OneShotError, match="result before its welcome"):
        exchange.receive(_worker_bytes(protocol.Result(1, 1, 100, 0.0)))


def test_one_shot_exchange_refuses_a_worker_without_the_kernel() -> None:
    exchange = OneShotExchange(seed=5, stream=3, points=100, kernel="python")
    with pytest.raises(OneShotError, match="does not offer kernel 'python'"):
        exchange.receive(_worker_bytes(WELCOME))


def test_one_shot_exchange_words_an_early_end_of_stream() -> None:
    exchange = OneShotExchange(seed=5, stream=3, points=100, kernel="numpy")
    assert exchange.receive(_worker_bytes(WELCOME)) is None
    assert "before answering" in str(exchange.end_of_stream())
    cut_short = OneShotExchange(seed=5, stream=3, points=100, kernel="numpy")
    cut_short.receive(_worker_bytes(WELCOME) + protocol.encode(protocol.Result(1, 1, 100, 0.0))[:5])
    assert "truncated_frame" in str(cut_short.end_of_stream())


# ------------------------------------------------------------------ mcpi bench approaches


def test_approaches_json_has_the_documented_shape(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run_cli(
        ["bench", "approaches", "--points", "30000", "--chunk-size", "10000", "--workers", "2",
         "--seed", "7", "--repeat", "1", "--only", "sequential,process-pool,trio-pool", "--json"],
        capsys,
    )  # fmt: skip
    assert code == 0
    document = json.loads(out)
    assert set(document) == {
        "points", "chunk_size", "workers", "kernel", "seed", "repeat", "load_average", "results",
    }  # fmt: skip
    assert (document["points"], document["workers"], document["kernel"], document["seed"]) == (
        30000, 2, "numpy", 7,
    )  # fmt: skip
    assert (document["chunk_size"], document["repeat"], len(document["load_average"])) == (10000, 1, 2)
    assert [r["approach"] for r in document["results"]] == ["sequential", "process-pool", "trio-pool"]
    for result in document["results"]:
        assert set(result) == {"approach", "wall_s", "startup_s", "points_per_s", "speedup", "inside", "pi"}
        # The table's start-up column: the persistent pools' start, None where nothing starts ahead.
        assert (result["startup_s"] is None) == (result["approach"] == "sequential")
        assert result["wall_s"] > 0 and result["points_per_s"] > 0 and result["speedup"] > 0
        assert result["pi"] == 4 * result["inside"] / 30000
    assert len({r["inside"] for r in document["results"]}) == 1


def test_approaches_table_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chart = tmp_path / "approaches.png"
    code, out, err = _run_cli(
        ["bench", "approaches", "--points", "20000", "--chunk-size", "10000", "--seed", "3",
         "--repeat", "2", "--only", "threads,sequential", "--plot", str(chart)],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert any(line.split()[:1] == ["sequential"] and "1.00×" in line for line in lines)
    assert any(line.split()[:1] == ["threads"] for line in lines)
    assert "all 2 approaches counted the same" in out
    data = chart.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    from PIL import Image

    with Image.open(chart) as image:
        image.verify()
        assert image.size[0] > 300 and image.size[1] > 150


def test_approaches_without_matplotlib_fail_before_measuring_naming_the_extra(tmp_path: Path) -> None:
    done = _run_cli_subprocess(
        "sys.modules['matplotlib'] = None",
        ["bench", "approaches", "--points", "1000", "--only", "sequential", "--plot", str(tmp_path / "c.png")],
    )
    assert done.returncode == 1
    assert done.stdout == ""  # nothing was measured
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "pip install -e '.[bench]' in mcpi's source tree" in done.stderr and "Traceback" not in done.stderr


LYING_WORKER = """\
    # A worker that speaks the protocol but miscounts: every point is "inside".
    import os, sys
    from mcpi_worker import protocol as p
    decoder = p.FrameDecoder(p.COORDINATOR_MESSAGES)
    while data := os.read(0, 65536):
        decoder.feed(data)
        while (m := decoder.next_message()) is not p.NEED_DATA:
            if isinstance(m, p.Hello):
                reply = p.Welcome(1, "liar", os.getpid(), "h", ("numpy",), 4, p.MAX_FRAME, p.MAX_POINTS)
            elif isinstance(m, p.Sample):
                reply = p.Result(m.id, m.points, m.points, 0.0)
            else:
                sys.exit(0)
            os.write(1, p.encode(reply))
"""


def test_approaches_that_disagree_fail_with_a_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    liar = tmp_path / "lying_worker.py"
    liar.write_text(textwrap.dedent(LYING_WORKER))
    code, out, err = _run_cli(
        ["bench", "approaches", "--points", "2000", "--chunk-size", "1000", "--seed", "1",
         "--repeat", "1", "--only", "sequential,trio-run-process",
         "--worker-cmd", f"{sys.executable} {liar}", "--json"],
        capsys,
    )  # fmt: skip
    assert code == 1
    counts = {r["approach"]: r["inside"] for r in json.loads(out)["results"]}
    assert counts["trio-run-process"] == 2000 and counts["sequential"] < 2000
    assert err.startswith("mcpi bench approaches: error: approaches disagree") and err.count("\n") == 1
    assert "trio-run-process counted 2000" in err


FAILING_WORKER = "-c 'import sys; print(\"no luck today\", file=sys.stderr); sys.exit(4)'"


@pytest.mark.parametrize("approach", ["asyncio-subprocess", "trio-run-process", "trio-pool"])
def test_a_worker_command_that_fails_is_one_line_and_exit_1(
    approach: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run_cli(
        ["bench", "approaches", "--points", "1000", "--repeat", "1", "--workers", "1",
         "--only", approach, "--worker-cmd", f"{sys.executable} {FAILING_WORKER}"],
        capsys,
    )  # fmt: skip
    assert code == 1 and out == ""
    assert err.startswith(f"mcpi bench approaches: error: {approach} failed: ") and err.count("\n") == 1
    assert "exit code 4" in err and "no luck today" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "sequential,warp-drive"], "unknown approach 'warp-drive'"),
        (["--plot", "chart.svg"], "must end in .png"),
        (["--points", "-5"], "'-5' is too small; give at least 1"),
        (["--points", "1e30"], "'1e30' is too large; the most is 100,000,000,000"),
        (["--repeat", "1e4"], "'1e4' is too large; the most is 1,000"),
        (["--workers", "0"], "at least 1"),
        (["--kernel", "fortran"], "invalid choice"),
        (["--worker-cmd", "mcpi-wroker"], "invalid --worker-cmd: 'mcpi-wroker' is not a program on PATH"),
    ],
)
def test_bad_arguments_are_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bench", "approaches", *args])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------ mcpi bench overhead


@pytest.mark.slow
def test_overhead_json_has_the_documented_shape(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run_cli(["bench", "overhead", "--tasks", "40", "--workers", "2", "--json"], capsys)
    assert code == 0
    document = json.loads(out)
    assert set(document) == {"tasks", "workers", "busy", "busy_same_session", "load_average", "results"}
    assert (document["tasks"], document["workers"], document["busy"]) == (40, 2, 0)
    assert document["busy_same_session"] is False
    assert [r["approach"] for r in document["results"]] == list(overhead.OVERHEAD_APPROACHES)
    for result in document["results"]:
        assert set(result) == {"approach", "round_trip_us", "tasks_per_s", "batched", "unavailable"}
        assert result["round_trip_us"] > 0 and result["tasks_per_s"] > 0, result
    assert {r["approach"] for r in document["results"] if r["batched"]} == {"joblib", "trio-pool/range"}


@pytest.mark.slow
@pytest.mark.parametrize("same_session", [False, True], ids=["own-sessions", "same-session"])
def test_overhead_busy_runs_beside_that_many_loops_and_leaves_none(same_session: bool) -> None:
    """``--busy N``: N CPU-bound loops run while the pools are measured, in sessions of
    their own (or the command's with ``--busy-same-session``), and none outlives the
    command; the figures say what they ran beside. The process table is the judge."""
    import time

    import psutil

    from mcpi_coordinator.testing.processes import still_running

    args = ["bench", "overhead", "--tasks", "20", "--workers", "1", "--busy", "2", "--json"]
    bench = subprocess.Popen(
        [sys.executable, "-m", "mcpi_coordinator", *args, *(["--busy-same-session"] if same_session else [])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        command = psutil.Process(bench.pid)
        deadline = time.monotonic() + 120  # a bound against a hang: the loops start first
        loops: dict[int, int] = {}
        while len(loops) < 2:
            assert bench.poll() is None, bench.communicate()
            assert time.monotonic() < deadline, "the loops never started"
            for child in command.children():
                try:
                    if "os.getppid() == parent" in " ".join(child.cmdline()):
                        loops[child.pid] = os.getsid(child.pid)
                except (psutil.NoSuchProcess, ProcessLookupError):
                    pass
            time.sleep(0.01)
        out, err = bench.communicate(timeout=300)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert bench.returncode == 0, err
    if same_session:
        assert set(loops.values()) == {os.getsid(0)}  # the command's, which it shares with this test
    else:
        assert list(loops.values()) == list(loops)  # each leads a session of its own
    assert still_running(loops) == []  # killed and reaped before the command ended
    document = json.loads(out)
    assert (document["busy"], document["busy_same_session"]) == (2, same_session)
    assert all(r["tasks_per_s"] > 0 for r in document["results"] if r["unavailable"] is None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--busy", "-1"], "argument --busy: '-1' is negative; give 0 or more"),
        (["--busy", "2000"], "argument --busy: '2000' is too large; the most is 1,024 (a process each)"),
        (["--busy", "many"], "argument --busy: 'many' is not a whole number"),
    ],
)
def test_a_bad_busy_is_a_usage_error(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bench", "overhead", *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err.splitlines()[-1] and "Traceback" not in err


@pytest.mark.slow
def test_a_missing_optional_peer_is_listed_as_unavailable() -> None:
    done = _run_cli_subprocess(
        "sys.modules['trio_parallel'] = None",
        ["bench", "overhead", "--tasks", "20", "--workers", "1", "--json"],
    )
    assert done.returncode == 0, done.stderr
    results = {r["approach"]: r for r in json.loads(done.stdout)["results"]}
    unavailable = results["trio-parallel"]
    assert unavailable["round_trip_us"] is None and unavailable["tasks_per_s"] is None
    assert unavailable["unavailable"].startswith("cannot import trio_parallel")
    assert results["trio-pool"]["tasks_per_s"] > 0 and results["process-pool"]["tasks_per_s"] > 0
    assert "trio-parallel unavailable: cannot import trio_parallel" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_missing_optional_peer_shows_in_the_table() -> None:
    done = _run_cli_subprocess(
        "sys.modules['anyio'] = None", ["bench", "overhead", "--tasks", "20", "--workers", "1"]
    )
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("anyio-to-process"))
    assert "unavailable: cannot import anyio" in row
    assert "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("approach", "signal_name", "code", "words"),
    [
        ("trio-run-process", "SIGINT", 130, "interrupted"),
        ("trio-pool", "SIGINT", 130, "interrupted"),
        ("trio-pool", "SIGTERM", 143, "terminated (SIGTERM)"),  # stops like Ctrl-C
    ],
)
def test_ctrl_c_and_sigterm_stop_in_order_and_leave_no_worker(
    approach: str, signal_name: str, code: int, words: str
) -> None:
    import signal
    import time

    import psutil

    bench = subprocess.Popen(
        [sys.executable, "-m", "mcpi_coordinator", "bench", "approaches", "--points", "1e11",
         "--chunk-size", "1e9", "--workers", "2", "--only", approach],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        workers: list[psutil.Process] = []
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = workers_among(psutil.Process(bench.pid).children(recursive=True))
            time.sleep(0.05)
        assert len(workers) == 2, "the workers never started"
        time.sleep(0.3)  # let them get into their chunks
        bench.send_signal(getattr(signal, signal_name))
        _, err = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert bench.returncode == code
    assert err == f"mcpi bench approaches: {words}; every worker was stopped\n"
    _gone, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == [], f"left running: {alive}"


def test_an_approach_s_tasks_per_second_is_the_median_of_its_passes() -> None:
    # One pass's rate is a draw on a shared machine (multiprocessing.Pool's imap_unordered
    # swung twofold between passes through one pool): every approach's tasks/s is the
    # median of THROUGHPUT_PASSES passes, each timed alone. Passes of 1, 5 and 2 s here.
    ticks = iter([0.0, 1.0, 10.0, 15.0, 20.0, 22.0])
    ran: list[int] = []
    rate = overhead._median_rate(ran.append, 100, clock=lambda: next(ticks))
    assert overhead.THROUGHPUT_PASSES == 3
    assert ran == [100, 100, 100]
    assert rate == 100 / 2


def test_a_bench_measurement_takes_ctrl_c_only_at_a_checkpoint() -> None:
    """``run_trio`` raises Ctrl-C at the main task's next checkpoint, not inside the code
    between two: a Ctrl-C inside ``Nursery.start_soon`` (unprotected by Trio) left a task
    that never ran, and a stopped ``mcpi bench overhead`` ended in ``TrioInternalError``
    and a traceback (CI). Here the signal comes before a burst of ``start_soon`` calls;
    the burst completes and the interrupt is raised where the main task waits next (with
    a plain ``trio.run`` it is raised at once, inside the burst)."""
    from mcpi_coordinator.bench.measure import run_trio

    spawned: list[int] = []

    async def nothing() -> None:
        pass

    async def stopped_in_a_burst() -> None:
        async with trio.open_nursery() as nursery:
            signal.raise_signal(signal.SIGINT)
            for index in range(1000):
                nursery.start_soon(nothing)
                spawned.append(index)
            with trio.fail_after(60):  # the Ctrl-C is taken where the main task waits
                await trio.sleep_forever()

    # Trio takes Ctrl-C over only from Python's own handler (a module imported here may
    # have left another in place).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(BaseExceptionGroup) as raised:  # from inside the nursery
            run_trio(stopped_in_a_burst)
    finally:
        signal.signal(signal.SIGINT, previous)
    interrupted, rest = raised.value.split(KeyboardInterrupt)
    assert interrupted is not None and rest is None, raised.value
    assert len(spawned) == 1000


def test_every_bench_trio_run_goes_through_run_trio() -> None:
    """The one home of how ``mcpi bench`` runs Trio: no module of the bench calls
    ``trio.run`` itself (``bench.measure.run_trio``'s docstring says why)."""
    bench = Path(overhead.__file__).parent
    direct = [
        f"{path.name}:{node.lineno}"
        for path in sorted(bench.glob("*.py"))
        if path.name != "measure.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "trio.run"
    ]
    assert direct == []
