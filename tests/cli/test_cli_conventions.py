"""What a demanding new user expects of a command line (issue 14): one test per finding,
each checking the exit code and the exact first line, in real ``mcpi`` processes.

Runs are tiny (a few points, one or two workers); every subprocess has a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from command_line import CLEAN_ENV, MCPI, PYTHON, run_in_terminal
from command_line import mcpi_clean as mcpi

from mcpi_coordinator import __version__
from mcpi_coordinator.cli.main import build_parser
from mcpi_coordinator.testing.processes import workers_among
from mcpi_worker.kernels import count_numpy


def first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


# ------------------------------------------------------------------ numbers: bounded, exact


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["estimate", "--points", "1e30"],
         "mcpi estimate: error: argument -n/--points: '1e30' is too large; the most is "
         "9,007,199,254,740,992 (beyond 2**53 counts are not exact in JSON readers) "
         "(see 'mcpi estimate --help')"),
        (["bench", "approaches", "--points", "1e30"],
         "mcpi bench approaches: error: argument -n/--points: '1e30' is too large; the most is "
         "100,000,000,000 (the sequential baseline takes minutes a run) "
         "(see 'mcpi bench approaches --help')"),
        (["bench", "overhead", "--tasks", "1e9"],
         "mcpi bench overhead: error: argument -n/--tasks: '1e9' is too large; the most is "
         "10,000,000 (up to ~40 minutes of no-ops per approach) (see 'mcpi bench overhead --help')"),
        (["scatter", "--stream", "1e30"],
         "mcpi scatter: error: argument --stream: '1e30' is too large; the most is "
         "18,446,744,073,709,551,615 (a stream number is below 2**64) (see 'mcpi scatter --help')"),
        (["estimate", "--seed", "1e999999999"],
         "mcpi estimate: error: argument -s/--seed: '1e999999999' is too large; the most is "
         "18,446,744,073,709,551,615 (a seed is below 2**64) (see 'mcpi estimate --help')"),
        (["estimate", "--points", "-5"],
         "mcpi estimate: error: argument -n/--points: '-5' is too small; give at least 1 "
         "(see 'mcpi estimate --help')"),
        (["estimate", "--max-time", "inf"],
         "mcpi estimate: error: argument --max-time: 'inf' is not a finite number of seconds; "
         "leave the option out for no limit (see 'mcpi estimate --help')"),
    ],
)  # fmt: skip
def test_every_count_is_bounded_and_the_line_says_the_bound(args: list[str], line: str) -> None:
    run = mcpi(*args)
    assert (run.returncode, run.stdout, run.stderr) == (2, "", line + "\n")


def test_a_seed_with_an_exponent_is_the_number_typed_not_the_nearest_double() -> None:
    run = mcpi("estimate", "-n", "1000", "-w", "1", "--json", "--seed", "9007199254740993e0")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["seed"] == 9_007_199_254_740_993  # float() would make it ...992
    assert report["inside"] == count_numpy(9_007_199_254_740_993, 0, 1000)


def test_exponents_and_decimals_that_are_whole_are_exact() -> None:
    from mcpi_coordinator.arguments import parse_whole_number

    assert parse_whole_number("2.5e9") == 2_500_000_000
    assert parse_whole_number("1_000_000") == 1_000_000
    assert parse_whole_number("18446744073709551615e0") == 2**64 - 1
    # Plain digits are read without decimal (arguments.py), the same numbers as through it.
    digits = ("0", "007", " 1000 ", "9" * 40, "١٢", "１２")
    assert [parse_whole_number(t) for t in digits] == [0, 7, 1000, 10**40 - 1, 12, 12]
    assert parse_whole_number("1" + "0" * 41) == parse_whole_number("1" + "0" * 60) == 10**41  # above every bound
    for bad in ("1.5", "inf", "nan", "0x10", "1__0", "_1", "", "1e-3"):
        assert parse_whole_number(bad) is None, bad


# ------------------------------------------------------------------ errors name the right command


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["estimate", "--pointz", "5"],
         "mcpi estimate: error: unrecognized arguments: --pointz 5 (did you mean --points?) "
         "(see 'mcpi estimate --help')"),
        (["estimate", "--po", "1e6"],  # no abbreviations: a typo never becomes another option
         "mcpi estimate: error: unrecognized arguments: --po 1e6 (did you mean --points?) "
         "(see 'mcpi estimate --help')"),
        (["--workers", "2", "estimate"],
         "mcpi: error: --workers is an option of the command, so it goes after it: "
         "mcpi estimate --workers 2 (see 'mcpi --help')"),
        (["--verison"],
         "mcpi: error: unrecognized arguments: --verison (did you mean --version?) (see 'mcpi --help')"),
        (["--json"],
         "mcpi: error: unrecognized arguments: --json; a command's options go after it: mcpi COMMAND --json "
         "(see 'mcpi --help')"),
        (["estimat"],
         "mcpi: error: unknown command 'estimat' (did you mean estimate?); commands: estimate, "
         "combine, scatter, bench, completion (see 'mcpi --help')"),
        (["bench", "overhead", "--task", "5"],
         "mcpi bench overhead: error: unrecognized arguments: --task 5 (did you mean --tasks?) "
         "(see 'mcpi bench overhead --help')"),
        (["scatter", "--frames", "3", "-o", "x.png"],
         "mcpi scatter: error: --frames needs a .gif output, not 'x.png' (see 'mcpi scatter --help')"),
        ([],  # "the following arguments are required: COMMAND" named no command
         "mcpi: error: give a command: estimate, combine, scatter, bench, completion (see 'mcpi --help')"),
        (["bench"],
         "mcpi bench: error: give a benchmark: approaches, overhead (see 'mcpi bench --help')"),
        (["completion"],
         "mcpi completion: error: give a shell: bash, zsh, fish (see 'mcpi completion --help')"),
    ],
)  # fmt: skip
def test_usage_errors_name_the_command_and_suggest_the_nearest(args: list[str], line: str) -> None:
    run = mcpi(*args)
    assert (run.returncode, run.stdout, run.stderr) == (2, "", line + "\n")


def _all_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _all_parsers(child)


@pytest.mark.parametrize("prog", [p.prog for p in _all_parsers(build_parser())])
def test_version_works_on_every_command(prog: str) -> None:
    run = mcpi(*prog.split()[1:], "--version")
    assert (run.returncode, run.stdout, run.stderr) == (0, f"mcpi {__version__}\n", "")


def test_estimate_has_the_short_flags_scatter_and_bench_have() -> None:
    run = mcpi("estimate", "-n", "2000", "-w", "1", "-s", "3", "-q", "--chunk-size", "1000")
    assert (run.returncode, run.stderr) == (0, "")
    assert first_line(run.stdout).startswith("π ≈ ")


def test_help_strings_write_numbers_one_way() -> None:
    for parser in _all_parsers(build_parser()):
        helps = parser.format_help()
        assert not re.search(r"\de\+\d", helps), parser.prog  # 1e+09 beside 100,000,000


def test_top_level_help_carries_the_essentials() -> None:
    run = mcpi("--help")
    assert run.returncode == 0
    for essential in ("exit codes:", "130/143/129", "MCPI_WORKER_CMD", "NO_COLOR", "mcpi completion bash",
                      "mcpi-trio", "examples:"):  # fmt: skip
        assert essential in run.stdout, essential


# ------------------------------------------------------------------ environment


@pytest.mark.slow
def test_the_environment_sets_defaults_and_the_command_line_wins() -> None:
    env = {"MCPI_WORKER_CMD": "/nonexistent/from-env", "MCPI_LOG_FORMAT": "json"}
    run = mcpi("estimate", "-n", "1000", "-w", "1", env=env)
    assert (run.returncode, run.stderr) == (
        2,
        "mcpi estimate: error: invalid MCPI_WORKER_CMD: '/nonexistent/from-env' does not exist "
        "(see 'mcpi estimate --help')\n",
    )
    ok = mcpi(
        "estimate", "-n", "1000", "-w", "1", "--json", "--worker-cmd", f"{PYTHON} -m mcpi_worker", env=env
    )
    assert ok.returncode == 0, ok.stderr


def test_a_bad_value_in_the_environment_names_the_variable() -> None:
    run = mcpi("estimate", "-n", "1000", env={"MCPI_LOG_LEVEL": "loud"})
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr == (
        "mcpi estimate: error: environment variable MCPI_LOG_LEVEL='loud' is not one of debug, "
        "info, warning, error, critical (it sets the default of --log-level) (see 'mcpi estimate --help')\n"
    )
    split = mcpi("estimate", "-n", "1000", env={"MCPI_WORKER_CMD": "'unclosed"})
    assert split.returncode == 2
    assert split.stderr == (
        'mcpi estimate: error: invalid MCPI_WORKER_CMD "\'unclosed": No closing quotation '
        "(see 'mcpi estimate --help')\n"
    )


# ------------------------------------------------------------------ start-up, workers, runtime errors


@pytest.mark.slow
def test_a_worker_slow_to_welcome_is_named_while_the_run_waits() -> None:
    run = mcpi("estimate", "-n", "1000", "-w", "1", "--worker-cmd", "sleep 1000",
               "--startup-timeout", "1", "--log-format", "json")  # fmt: skip
    assert run.returncode == 1
    lines = run.stderr.splitlines()
    warning = json.loads(lines[0])
    assert (warning["event"], warning["level"], warning["worker"]) == ("worker_slow_to_start", "warning", 0)
    assert (warning["command"], warning["startup_timeout_s"], warning["waited_s"]) == ("sleep 1000", 1.0, 0.5)
    assert lines[-1].startswith("mcpi estimate: error: no worker left: ")
    assert "no welcome within the 1 s start-up timeout" in lines[-1]


@pytest.mark.slow
def test_dropped_workers_are_not_counted_as_working_ones() -> None:
    # Worker 0 is a real worker; workers 1 and 2 exit at once, every time.
    command = f"sh -c 'test {{i}} = 0 && exec {PYTHON} -m mcpi_worker; exit 3'"
    args = ("-n", "4000", "--chunk-size", "1000", "-w", "3", "-s", "1", "--worker-cmd", command)
    run = mcpi("estimate", *args)
    assert run.returncode == 0, run.stderr
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in run.stdout.splitlines() if "  " in line)
    assert rows["workers"] == "1 of 3  (0 restarts; 2 dropped after 6 failed starts)"
    report = json.loads(mcpi("estimate", *args, "--json").stdout)
    assert (report["workers"], report["workers_retired"]) == (3, 2)


def test_a_chunk_size_that_leaves_workers_idle_says_so() -> None:
    run = mcpi("estimate", "-n", "1000", "-w", "2", "-s", "1")
    assert run.returncode == 0
    assert (
        run.stderr
        == "mcpi estimate: note: 1 chunk for 2 workers: starting 1 (1 would be idle); "
        "--chunk-size 500 would use them all\n"
    )
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in run.stdout.splitlines() if "  " in line)
    assert rows["workers"] == "1  (0 restarts)"  # the idle one was never started
    assert rows["points"] == "1,000 in 1 chunk of up to 10,000,000"
    assert re.fullmatch(r"[\d.]+( k)?", rows["points/s"]), rows["points/s"]  # never "0.0 M"


def test_an_empty_hosts_file_is_named(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("# nothing yet\n\n")
    run = mcpi("estimate", "--workers", "0", "--hosts-file", str(hosts))
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr == (
        f"mcpi estimate: error: hosts file {str(hosts)!r} lists no hosts (only blank lines and comments) "
        "and --workers is 0: no worker to run (see 'mcpi estimate --help')\n"
    )


def _children_of(process: psutil.Popen, count: int, timeout: float = 60) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while len(children := workers_among(process.children(recursive=True))) < count:
        assert time.monotonic() < deadline, "the workers never started"
        time.sleep(0.05)
    return children


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code", "words"),
    [(signal.SIGTERM, 143, "terminated (SIGTERM)"), (signal.SIGHUP, 129, "hung up (SIGHUP)")],
)
def test_sigterm_and_sighup_stop_like_ctrl_c(signum: int, code: int, words: str) -> None:
    process = psutil.Popen(
        [*MCPI, "estimate", "--points", "1e13", "--workers", "2", "--seed", "1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CLEAN_ENV,
    )  # fmt: skip
    try:
        workers = _children_of(process, 2)
        # Into their chunks: more CPU than a worker's start-up (~0.3 s), which runs beside
        # the coordinator's own (workers start as the command begins).
        deadline = time.monotonic() + 60
        while not all(w.cpu_times().user > 1.0 for w in workers):
            assert time.monotonic() < deadline, "the workers never got busy"
            time.sleep(0.05)
        process.send_signal(signum)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert (process.returncode, out) == (code, "")
    assert err == f"mcpi estimate: {words} (seed 1); every worker was stopped\n"
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == []


# ------------------------------------------------------------------ pipes, terminals, NO_COLOR


@pytest.mark.slow
def test_piped_output_is_plain_whole_lines() -> None:
    run = mcpi("estimate", "-n", "2000", "--chunk-size", "1000", "-w", "1", "--target-error", "1e-9")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert all(line == line.rstrip() for line in lines), "trailing spaces"
    assert "\x1b" not in run.stdout + run.stderr
    seed_row = next(line for line in lines if line.startswith("seed"))
    assert re.fullmatch(r"seed {12}\d+  \(drawn at random; --seed \d+ repeats this run\)", seed_row)
    bench = mcpi("bench", "overhead", "--tasks", "30", "--workers", "1")
    assert bench.returncode == 0, bench.stderr
    table = bench.stdout.splitlines()[1:]
    assert all(line == line.rstrip() and len(line) <= 100 for line in table), table
    assert table[0].startswith("approach") and table[1].startswith("process-pool")


@pytest.mark.slow
def test_a_narrow_terminal_gets_wrapped_rows_and_stacked_tables() -> None:
    code, screen = run_in_terminal(
        ["estimate", "-n", "2000", "--chunk-size", "1000", "-w", "1", "--no-progress"], 60
    )
    assert code == 0
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", screen)
    lines = text.replace("\r", "").splitlines()
    assert all(len(line) <= 60 for line in lines), [line for line in lines if len(line) > 60]
    seed_at = next(i for i, line in enumerate(lines) if line.startswith("seed"))
    assert lines[seed_at + 1].startswith(" " * 16)  # the long value wraps under itself
    code, screen = run_in_terminal(["bench", "overhead", "--tasks", "30", "--workers", "1"], 60)
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", screen).replace("\r", "")
    assert code == 0
    assert "\nprocess-pool\n  round trip (µs)" in text  # one block per approach, nothing cut


def test_no_color_means_no_escape_codes_not_even_bold() -> None:
    args = ["estimate", "-n", "2000", "--chunk-size", "1000", "-w", "1", "--no-progress"]
    args += ["--log-level", "info"]
    code, styled = run_in_terminal(args, 100)
    assert code == 0 and "\x1b[1m" in styled  # bold labels on a terminal
    code, plain = run_in_terminal(args, 100, env={"NO_COLOR": "1"})
    assert code == 0 and "π ≈" in plain and "worker_ready" in plain
    assert "\x1b[" not in plain


# ------------------------------------------------------------------ the worker in a terminal


def test_mcpi_worker_started_in_a_terminal_says_what_it_is() -> None:
    leader, follower = pty.openpty()
    process = subprocess.run(
        [sys.executable, "-m", "mcpi_worker"], stdin=follower, capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    os.close(follower)
    os.close(leader)
    assert (process.returncode, process.stdout) == (2, "")
    assert first_line(process.stderr) == (
        "mcpi-worker: stdin is a terminal, but this program speaks a binary protocol meant for "
        "another program (mcpi estimate, or yours: see protocol.md)."
    )
    assert "mcpi-worker --self-check" in process.stderr


# ------------------------------------------------------------------ shell completion


def _complete(line: str, tmp_path: Path) -> list[str]:
    """What argcomplete answers a shell for ``line`` (the protocol its shell code speaks)."""
    out = tmp_path / "completions"
    env = {**CLEAN_ENV, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "_ARGCOMPLETE_IFS": "\n", "_ARGCOMPLETE_STDOUT_FILENAME": str(out)}  # fmt: skip
    subprocess.run([*MCPI], env=env, timeout=60, check=False, capture_output=True)
    return [word.strip() for word in out.read_text().split("\n")]


def test_completion_offers_commands_options_and_choices(tmp_path: Path) -> None:
    assert "estimate" in _complete("mcpi est", tmp_path)
    assert "--points" in _complete("mcpi estimate --poi", tmp_path)
    assert set(_complete("mcpi estimate --kernel ", tmp_path)) >= {"numpy", "python"}
    assert set(_complete("mcpi bench ", tmp_path)) >= {"approaches", "overhead"}


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_shell_code(shell: str) -> None:
    run = mcpi("completion", shell)
    assert run.returncode == 0 and run.stderr == ""
    assert "_ARGCOMPLETE" in run.stdout and "mcpi" in run.stdout


def test_the_bash_completion_code_completes_in_a_real_bash(tmp_path: Path) -> None:
    code = mcpi("completion", "bash").stdout
    launcher = tmp_path / "mcpi"
    launcher.write_text(f'#!/bin/sh\nexec {PYTHON} -m mcpi_coordinator "$@"\n')
    launcher.chmod(0o755)
    script = (
        code
        + '\nCOMP_LINE="mcpi estimate --wor"; COMP_POINT=${#COMP_LINE}; COMP_WORDS=(mcpi estimate --wor);'
        ' COMP_CWORD=2; _python_argcomplete mcpi; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, check=False,
                         env={**CLEAN_ENV, "PATH": f"{tmp_path}:{os.environ['PATH']}"})  # fmt: skip
    assert set(run.stdout.split()) == {"--workers", "--worker-cmd"}, run.stderr
