"""Issue 23, findings 6 and 7: files given to ``mcpi combine`` and ``--hosts-file``, and
pictures written where a symlink waits. Each hostile file is one line and exit 2.

Commands that read without a bound would read ``/dev/zero`` until ``MemoryError``: they
run in a child whose address space is capped, so that code fails in seconds here
rather than filling the machine.
"""

from __future__ import annotations

import fcntl
import json
import os
import resource
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest
from command_line import MCPI

from mcpi_coordinator.cli.main import main
from mcpi_coordinator.files import MAX_JSON_DEPTH, json_depth, json_loads_limited

WHOLE: dict[str, Any] = {
    "seed": 1, "requested_points": 1_000, "chunk_size": 100, "inside": 785, "points": 1_000, "kernel": "numpy",
}  # fmt: skip
"""A whole run's --json, as little of it as combine needs."""


def capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))


def mcpi(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    run = subprocess.run(
        [*MCPI, *args], input=stdin, capture_output=True, timeout=120, preexec_fn=capped, check=False,
    )  # fmt: skip
    return subprocess.CompletedProcess(run.args, run.returncode, run.stdout.decode(), run.stderr.decode())


def one_line_exit_2(run: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert (run.returncode, run.stdout) == (2, ""), run.stderr[-2000:]
    assert len(run.stderr.splitlines()) == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    for part in expected:
        assert part in run.stderr, run.stderr


def combine_in_process(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, str, str]:
    code = main(["combine", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- mcpi combine


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"seed": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested 100,001 deep"),
        (json.dumps({**WHOLE, "seed": 10**400}), "a number of 401 digits"),
        (json.dumps({**WHOLE, "seed": 2**64}), "seed is 18,446,744,073,709,551,616, more than mcpi writes"),
        (json.dumps({**WHOLE, "chunk_size": 10**30}), "more than mcpi writes"),
        (json.dumps({**WHOLE, **dict.fromkeys(("requested_points", "points", "inside"), 10**20)}), "more than mcpi"),
        (json.dumps(WHOLE)[:-1] + ', "pi": 1e400}', "1e400 is beyond a float"),
        (json.dumps({**WHOLE, "kernel": "numpy; touch /tmp/mcpi-owned"}), "not a kernel mcpi has"),
        (json.dumps({**WHOLE, "kernel": "python3"}), "kernel is 'python3', not a kernel mcpi has"),
    ],
)
def test_combine_refuses_what_mcpi_never_writes_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = tmp_path / "part.json"
    path.write_text(text)
    code, out, err = combine_in_process(capsys, path)
    assert (code, out) == (2, ""), err[-2000:]
    assert err.startswith("mcpi combine: error: ") and len(err.splitlines()) == 1 and len(err) < 400, err[-2000:]
    assert expected in err, err


def test_a_long_string_from_the_file_is_cut_short_in_the_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "part.json"
    path.write_text(json.dumps({**WHOLE, "kernel": "\x1b]0;owned\x07" + "x" * 1_000_000}))
    code, _, err = combine_in_process(capsys, path)
    assert code == 2 and len(err) < 400 and "\x1b" not in err and "\x07" not in err, err[:400]


def test_combine_of_a_huge_file_stops_reading_at_its_limit(tmp_path: Path) -> None:
    huge = tmp_path / "huge.json"
    with huge.open("wb") as file:
        file.truncate(2**30)  # 1 GiB (sparse): was read whole, then parsed
    one_line_exit_2(mcpi("combine", str(huge)), "huge.json: longer than 4 MiB")


@pytest.mark.parametrize(
    ("args", "expected"), [(("combine", "/dev/zero"), "a device"), (("combine", "-"), "longer than")]
)
def test_combine_of_an_endless_input_is_one_line(args: tuple[str, ...], expected: str) -> None:
    stdin = b"{" * (65 * 2**20) if args[-1] == "-" else b""
    one_line_exit_2(mcpi(*args, stdin=stdin), expected)


def test_combine_of_a_fifo_no_one_writes_is_one_line_not_a_wait(tmp_path: Path) -> None:
    fifo = tmp_path / "part.json"
    os.mkfifo(fifo)  # opening it to read waited for a writer that never comes
    one_line_exit_2(mcpi("combine", str(fifo)), "part.json: a FIFO (named pipe), not a regular file", "stdin with -")
    directory = tmp_path / "parts"
    directory.mkdir()
    one_line_exit_2(mcpi("combine", str(directory)), "parts: a directory, not a regular file")


def test_combine_reads_a_pipe_the_shell_passes_as_dev_fd_or_dev_stdin(tmp_path: Path) -> None:
    # bash's `mcpi combine <(ssh host cat part.json)` passes /dev/fd/N: an open pipe.
    read_end, write_end = os.pipe()
    os.write(write_end, json.dumps(WHOLE).encode())
    os.close(write_end)
    run = subprocess.run(
        [*MCPI, "combine", "--json", f"/dev/fd/{read_end}"], pass_fds=[read_end],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    os.close(read_end)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["inside"] == WHOLE["inside"]
    piped = mcpi("combine", "--json", "/dev/stdin", stdin=json.dumps(WHOLE).encode())
    assert piped.returncode == 0, piped.stderr


def test_combine_reads_all_of_a_non_blocking_stdin_that_is_still_being_written() -> None:
    """stdin a pipe whose read end is non-blocking (Node.js sets O_NONBLOCK on the pipes
    it hands on), its writer still writing: the first half is read (the pipe seen
    empty), the rest comes after. Before, ``-`` read returned the first half alone, taken
    for the whole input (not JSON: exit 2), or None, nothing having come yet (a
    ``TypeError`` traceback). (``/dev/stdin``, opened anew, was made blocking already.)"""
    document = json.dumps(WHOLE).encode()
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    command = subprocess.Popen(
        [*MCPI, "combine", "--json", "-"], stdin=read_end, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    os.close(read_end)
    try:
        os.write(write_end, document[:20])
        guard = time.monotonic() + 300  # a hang guard: the command starts and reads in well under that
        while _unread(write_end) > 0 and command.poll() is None and time.monotonic() < guard:
            time.sleep(0.01)  # until the command has read the first half: it waits for the rest now
        os.write(write_end, document[20:])
    except BrokenPipeError:
        pass  # it read the first half and left: the assertion below says how
    finally:
        os.close(write_end)
    out, err = command.communicate(timeout=120)
    assert command.returncode == 0, err.decode(errors="replace")
    assert json.loads(out)["inside"] == WHOLE["inside"]


def _unread(pipe_end: int) -> int:
    """Bytes in a pipe its reader has not read yet (Linux: FIONREAD on either end)."""
    return int.from_bytes(fcntl.ioctl(pipe_end, termios.FIONREAD, bytes(4)), sys.byteorder)


# ---------------------------------------------------------------- --hosts-file


def test_a_hosts_file_that_never_ends_is_one_line(tmp_path: Path) -> None:
    one_line_exit_2(
        mcpi("estimate", "-n", "1e3", "--hosts-file", "/dev/zero"),
        "hosts file '/dev/zero': a device, not a regular file",
    )
    huge = tmp_path / "hosts"
    with huge.open("wb") as file:
        file.truncate(2**30)
    one_line_exit_2(
        mcpi("estimate", "-n", "1e3", "--hosts-file", str(huge)), "is longer than 1 MiB: not a list of hosts"
    )


# ---------------------------------------------------------------- the JSON reader


def test_depth_is_counted_without_recursion_and_strings_are_not_brackets() -> None:
    assert json_depth('{"a": [1, {"b": "[[[[{{{"}]}') == 3
    assert json_depth('"\\"[[["') == 0
    assert json_depth("[" * 1_000_000) == 1_000_000
    assert json_loads_limited("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH) is not None
    with pytest.raises(ValueError, match="deeper than"):
        json_loads_limited("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1))
    with pytest.raises(ValueError, match="NaN is not a number mcpi writes"):
        json_loads_limited('{"x": NaN}')


# ---------------------------------------------------------------- --plot and --out (finding 7)


def test_a_picture_is_not_written_into_a_directory_anyone_may_write_without_the_sticky_bit(tmp_path: Path) -> None:
    # There anyone may rename or replace anyone's files: the picture could be swapped.
    pytest.importorskip("matplotlib")
    open_to_all = tmp_path / "scratch"
    open_to_all.mkdir()
    open_to_all.chmod(0o777)
    run = mcpi("estimate", "-n", "2e3", "--chunk-size", "1000", "-w", "1", "--plot", str(open_to_all / "run.png"))
    one_line_exit_2(run, "may be written by anyone and has no sticky bit", "chmod +t")
    assert "may be written by anyone and has no sticky bit" in run.stderr and "chmod +t" in run.stderr, run.stderr
    assert list(open_to_all.iterdir()) == []
    open_to_all.chmod(0o1777)
    run = mcpi("estimate", "-n", "2e3", "--chunk-size", "1000", "-w", "1", "--plot", str(open_to_all / "run.png"))
    assert run.returncode == 0, run.stderr
    assert [p.name for p in open_to_all.iterdir()] == ["run.png"]


@pytest.mark.parametrize("name", ["convergence.png", "scatter.png", "scatter.gif"])
def test_a_picture_replaces_a_symlink_at_its_path_rather_than_writing_through_it(tmp_path: Path, name: str) -> None:
    plots = pytest.importorskip("mcpi_coordinator.cli.plots")
    pytest.importorskip("matplotlib")
    victim = tmp_path / "precious"
    victim.write_bytes(b"someone's own data\n")
    out = tmp_path / name
    out.symlink_to(victim)  # left in a shared directory by another user, say
    if name.startswith("convergence"):
        plots.plot_convergence([100, 100], [80, 77], out)
    else:
        plots.save_scatter(plots.sample_quadrant(1, 0, 50), out, frames=3)
    assert victim.read_bytes() == b"someone's own data\n"
    assert not out.is_symlink() and out.read_bytes()[:4] in (b"\x89PNG", b"GIF8")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "precious"])  # no temporary left


def test_files_replacing_refuses_a_directory_anyone_may_write_without_the_sticky_bit(tmp_path: Path) -> None:
    from mcpi_coordinator.files import UnsafeDirectory, replacing

    tmp_path.chmod(0o777)
    with pytest.raises(UnsafeDirectory, match="no sticky bit"), replacing(tmp_path / "chart.png") as file:
        file.write(b"never")
    assert list(tmp_path.iterdir()) == []
