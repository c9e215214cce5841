"""``mcpi estimate`` as users run it: real coordinator and real worker processes.

Process-table checks use psutil. Point counts stay small (a run is ~1 s, mostly
interpreter start-up); bounds on time are generous because CI is a loaded 2-core box.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import psutil
import pytest
from command_line import FAKE_WORKER, MCPI, estimate_json, mcpi, read_until_closed

from mcpi_coordinator.cli.main import main
from mcpi_coordinator.run.estimate import iter_chunks
from mcpi_coordinator.testing.processes import peak_rss_until_exit
from mcpi_worker.kernels import count_numpy

JSON_FIELDS = {
    "pi", "inside", "points", "seed", "chunk_size", "kernel", "workers", "std_error",
    "ci95", "error", "elapsed_s", "points_per_s", "restarts",
}


def expected_inside(seed: int, points: int, chunk_size: int) -> int:
    return sum(count_numpy(seed, c.stream, c.points) for c in iter_chunks(seed, points, chunk_size))


@pytest.mark.slow
def test_estimate_json_end_to_end_and_identical_for_1_and_3_workers() -> None:
    args = ("--points", "3e6", "--chunk-size", "250_000", "--seed", "11")
    one = estimate_json(*args, "--workers", "1")
    three = estimate_json(*args, "--workers", "3")
    assert set(one) >= JSON_FIELDS
    expected = expected_inside(11, 3_000_000, 250_000)
    assert one["inside"] == three["inside"] == expected
    assert one["points"] == 3_000_000 and one["seed"] == 11 and one["chunk_size"] == 250_000
    assert (one["workers"], three["workers"]) == (1, 3)
    assert one["kernel"] == "numpy" and one["restarts"] == 0 and one["stopped_early"] is None
    assert one["pi"] == pytest.approx(4 * expected / 3_000_000)
    low, high = one["ci95"]
    assert low < one["pi"] < high and abs(one["error"]) < 0.01
    assert len(three["per_worker"]) == 3
    assert sum(w["chunks"] for w in three["per_worker"]) == 12
    # Work starts at the first ready worker: one still starting when the run ends has no host.
    assert {w["host"] for w in three["per_worker"] if w["chunks"]} == {os.uname().nodename}


def test_a_deeper_pipeline_reaches_the_workers_and_gives_the_same_count() -> None:
    args = ("--points", "2e5", "--chunk-size", "1e3", "--seed", "5", "--workers", "2")
    deep = mcpi("estimate", "--json", *args, "--pipeline-depth", "16", "--log-level", "info", "--log-format", "json")
    assert deep.returncode == 0, deep.stderr
    ready = [json.loads(line) for line in deep.stderr.splitlines() if '"worker_ready"' in line]
    # Work starts at the first ready worker: a run this short may end before the other is.
    assert ready and {event["worker"] for event in ready} <= {0, 1}  # the CLI says worker, not slot
    assert {event["depth"] for event in ready} == {16}
    inside = json.loads(deep.stdout)["inside"]
    assert inside == estimate_json(*args)["inside"] == expected_inside(5, 200_000, 1_000)


def test_human_output_names_every_figure_and_prints_a_drawn_seed() -> None:
    run = mcpi("estimate", "--points", "1e6", "--chunk-size", "1e5", "--workers", "2", "--kernel", "python")
    assert run.returncode == 0, run.stderr
    for label in ("π ≈", "error", "standard error", "95% CI", "points", "workers", "seed", "wall time", "points/s"):
        assert label in run.stdout
    seed_row = next(line for line in run.stdout.splitlines() if line.startswith("seed"))
    assert "drawn at random" in seed_row
    seed = int(seed_row.split()[1])
    # The drawn seed repeats the run.
    again = estimate_json(
        "--points", "1e6", "--chunk-size", "1e5", "--workers", "2", "--kernel", "python", "--seed", str(seed)
    )
    assert f"{again['pi']:.10f}" in run.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--points", "-5"], "'-5' is too small; give at least 1"),
        (["--points", "1e30"], "'1e30' is too large; the most is 9,007,199,254,740,992"),
        (["--workers", "-1"], "'-1' is negative; give 0 or more"),
        (["--workers", "1e5"], "'1e5' is too large; the most is 1,024 (local processes)"),
        (["--points", "lots"], "not a whole number"),
        (["--points", "1.5"], "not a whole number"),
        (["--workers", "0"], "no worker"),
        (["--kernel", "fortran"], "invalid choice"),
        (["--chunk-size", "0"], "'0' is too small; give at least 1"),
        (["--pipeline-depth", "0"], "'0' is too small; give at least 1"),
        (["--pipeline-depth", "2000"], "the most is 1,024 (what a worker can queue)"),
        (["--chunk-size", "1e13"], "the most is 1,099,511,627,776 (the protocol's limit per request)"),
        (["--seed", "1e20"], "'1e20' is too large; the most is 18,446,744,073,709,551,615"),
        (["--seed", "1.5"], "'1.5' is not a whole number"),
        (["--max-time", "-1"], "'-1' must be a positive number of seconds"),
        (["--max-time", "inf"], "'inf' is not a finite number of seconds; leave the option out for no limit"),
        (["--max-time", "nan"], "'nan' is not a number of seconds"),
        (["--task-timeout", "soon"], "not a number of seconds"),
        (["--worker-cmd", "'unclosed"], "No closing quotation"),
        (["--worker-cmd", "mcpi-no-such-program --jobs 2"], "'mcpi-no-such-program' is not a program on PATH"),
        (["--worker-cmd", "/nonexistent/mcpi-worker"], "--worker-cmd: '/nonexistent/mcpi-worker' does not exist"),
        (["--worker-cmd", os.devnull], f"invalid --worker-cmd: '{os.devnull}' is not an executable file"),
        (["--log-level", "loud"], "invalid choice"),
        (["--target-error", "0"], "must be a positive number"),
        (["--target-error", "tiny"], "is not a number"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(["estimate", *args])
    except SystemExit as exit:
        code = exit.code  # type: ignore[assignment]
    assert code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and message in err
    assert "Traceback" not in err


def test_bad_arguments_in_a_real_process_print_one_line_and_exit_2() -> None:
    run = mcpi("estimate", "--points", "-1e9")
    assert run.returncode == 2
    assert run.stderr == (
        "mcpi estimate: error: argument -n/--points: '-1e9' is too small; give at least 1 "
        "(see 'mcpi estimate --help')\n"
    )


@pytest.mark.slow
def test_ctrl_c_exits_130_quickly_and_leaves_no_worker() -> None:
    process = psutil.Popen(
        [*MCPI, "estimate", "--points", "1e13", "--workers", "2", "--seed", "1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(process.children()) < 2:
            assert time.monotonic() < deadline, "workers never started"
            time.sleep(0.05)
        workers = process.children()
        # Busy computing: more CPU than a worker's start-up takes (workers start as the
        # command begins, beside the coordinator's own start-up).
        while not all(w.cpu_times().user > 1.0 for w in workers):
            assert time.monotonic() < deadline, "workers never got busy"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        # The bound is the timeout (generous for a loaded CI box), not a timed assertion.
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    assert "Traceback" not in err and "interrupted (seed 1)" in err
    assert out == ""
    for worker in workers:
        assert not psutil.pid_exists(worker.pid) or worker.status() == psutil.STATUS_ZOMBIE


@pytest.mark.slow
def test_a_worker_flooding_stderr_does_not_stall_the_run_or_grow_memory() -> None:
    process = psutil.Popen(
        [*MCPI, "estimate", "--json", "--points", "2e6", "--chunk-size", "1e5", "--workers", "2",
         "--seed", "3", "--worker-cmd", f"{FAKE_WORKER} --stderr-flood 100"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        peak_rss = peak_rss_until_exit(process, poll_s=0.05)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert json.loads(out)["inside"] == expected_inside(3, 2_000_000, 100_000)
    assert peak_rss < 200 * 2**20  # 2 x 100 MB went through; the coordinator kept none of it


def test_a_crash_looping_worker_command_ends_with_one_clear_line() -> None:
    script = "import sys; sys.stderr.write('cannot start: no GPU here\\n'); sys.exit(7)"
    command = f"{shlex.quote(sys.executable)} -c \"{script}\""
    run = mcpi("estimate", "--points", "1e6", "--chunk-size", "1e5", "--workers", "2", "--worker-cmd", command,
               timeout=30)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "no worker left" in lines[0]
    assert "exit code 7" in lines[0] and "cannot start: no GPU here" in lines[0]
    assert "-c" in lines[0]  # the command is named
    assert "Traceback" not in run.stderr


@pytest.mark.slow
def test_a_worker_speaking_garbage_ends_with_the_protocol_error() -> None:
    run = mcpi("estimate", "--points", "1e6", "--workers", "1", "--worker-cmd", f"{FAKE_WORKER} --garbage")
    assert run.returncode == 1
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "frame_too_large" in run.stderr and "fake_worker" in run.stderr


def test_an_unknown_worker_command_is_a_usage_error_before_anything_starts() -> None:
    """A typo in --worker-cmd was three failed starts of every worker, then "no worker
    left" with exit 1; it is bad input, refused in one line with nothing started. So is
    a missing ssh for --host workers."""
    run = mcpi("estimate", "--points", "1e6", "--workers", "1", "--worker-cmd", "/nonexistent/mcpi-worker")
    assert (run.returncode, run.stderr) == (
        2,
        "mcpi estimate: error: invalid --worker-cmd: '/nonexistent/mcpi-worker' does not exist "
        "(see 'mcpi estimate --help')\n",
    )
    no_ssh = mcpi("estimate", "--workers", "0", "--host", "node1", env={**os.environ, "PATH": os.devnull})
    assert (no_ssh.returncode, no_ssh.stderr) == (
        2,
        "mcpi estimate: error: cannot start the workers: 'ssh' is not a program on PATH "
        "(see 'mcpi estimate --help')\n",
    )


@pytest.mark.parametrize(
    ("command", "said"),
    [
        ("true", "(true, pid {pid}): exited before its handshake (exit code 0)"),
        ("sh -c 'echo oops >&2; exit 3'", "exited before its handshake (exit code 3); stderr: oops"),
        ("echo hello", "wrote 'hello' on stdout instead of a frame"),
        (
            f"{sys.executable} -c 'print(\"I am not a worker\"); input()'",
            "wrote 'I am not a worker' on stdout instead of a frame",
        ),
    ],
)
def test_a_worker_command_that_is_no_worker_says_what_happened(command: str, said: str) -> None:
    """A first mistake: a worker command that exits at once (``true``, a script failing
    before its handshake) or prints text. Its exit status, its stderr and what it wrote in
    place of frames, not the broken pipe or the protocol error that followed from them."""
    run = mcpi("estimate", "--points", "1e6", "--workers", "1", "--worker-cmd", command)
    assert run.returncode == 1
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("mcpi estimate: error: no worker left"), line
    pid = line.split(", pid ")[1].split(")")[0]
    assert said.format(pid=pid) in line, line
    assert "pipe" not in line.lower() and "protocol error" not in line, line
    if "exit" in command:
        assert line.count("exit code 3") == 1, line


@pytest.mark.slow
def test_hung_workers_are_replaced_at_the_task_timeout_and_the_count_is_exact() -> None:
    result = estimate_json(
        "--points", "8e5", "--chunk-size", "1e5", "--workers", "2", "--seed", "5",
        "--task-timeout", "0.5", "--worker-cmd", f"{FAKE_WORKER} --hang-after 1",
    )
    assert result["inside"] == expected_inside(5, 800_000, 100_000)
    assert result["restarts"] >= 2


@pytest.mark.slow
def test_crashing_workers_are_replaced_and_the_count_is_exact() -> None:
    result = estimate_json(
        "--points", "1e6", "--chunk-size", "1e5", "--workers", "2", "--seed", "8",
        "--worker-cmd", f"{FAKE_WORKER} --crash-after 1 --exit-code -9",
    )
    assert result["inside"] == expected_inside(8, 1_000_000, 100_000)
    assert result["restarts"] >= 2


@pytest.mark.slow
def test_max_time_stops_early_with_a_valid_estimate() -> None:
    # Workers that count two requests truly and then never answer again: the run has
    # chunks to report and cannot end before --max-time, whatever the machine's speed
    # (10 s is room for a loaded machine to start them), rather than racing the clock.
    stalling = f"{FAKE_WORKER} --hang-after 2"
    result = estimate_json("--points", "1e13", "--workers", "2", "--max-time", "10", "--seed", "4",
                           "--worker-cmd", stalling, "--startup-timeout", "300")  # fmt: skip
    assert result["stopped_early"] == "max_time"
    assert 0 < result["points"] < 10**13 and result["requested_points"] == 10**13
    assert result["elapsed_s"] >= 10  # it ran until the limit, not to the end (1e13 points)
    low, high = result["ci95"]
    assert low < result["pi"] < high and abs(result["error"]) < 0.01


@pytest.mark.slow
def test_target_error_stops_early_once_the_interval_is_narrow_enough() -> None:
    result = estimate_json("--points", "1e13", "--workers", "2", "--target-error", "2e-4", "--seed", "4")
    assert result["stopped_early"] == "target_error"
    low, high = result["ci95"]
    assert (high - low) / 2 <= 2e-4
    assert result["points"] < 10**13


def test_worker_logs_are_reemitted_with_the_worker_id_and_pid_bound() -> None:
    run = mcpi("estimate", "--points", "1e6", "--chunk-size", "5e5", "--workers", "2", "--seed", "1",
               "--json", "--log-level", "info", "--log-format", "json")
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in run.stderr.splitlines()]
    pids = {w["slot"]: w["pid"] for w in json.loads(run.stdout)["per_worker"]}
    # mcpi-worker's own log line, its event named as the worker's (issue 23)
    started = [r for r in records if r["event"] == f"worker {r['worker']}: worker_started"]
    # Work starts at the first ready worker: the other may not have started when it ends.
    assert started and {(r["worker"], r["pid"]) for r in started} <= set(pids.items())
    assert all(r["level"] == "info" for r in started)


@pytest.mark.slow
def test_a_progress_bar_is_drawn_on_a_terminal_only() -> None:
    import pty

    args = [*MCPI, "estimate", "--points", "3e8", "--workers", "2", "--seed", "1", "--json"]
    plain = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert plain.returncode == 0 and plain.stderr == ""  # not a terminal: no bar, nothing
    leader, follower = pty.openpty()
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=follower, stdin=subprocess.DEVNULL)
    os.close(follower)
    drawn = read_until_closed(leader)
    out, _ = process.communicate(timeout=120)
    os.close(leader)
    assert process.returncode == 0
    assert json.loads(out)["inside"] == json.loads(plain.stdout)["inside"]
    assert b"sampled 300,000,000 points in " in drawn
