"""One run split over coordinators: ``mcpi estimate --part I/K`` and ``mcpi combine``.

The part bounds as a pure function (every chunk in exactly one part, for many n and K);
real ``mcpi estimate`` processes on real ``mcpi-worker`` processes counting parts on
different pools, in different orders (a crashing worker, --verify), a checkpointed part
stopped by --max-time and SIGKILLed mid-run, each combined by a real ``mcpi combine`` to
the bit-identical count of the single run; and every refusal as one line, exit 2.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from command_line import FAKE_WORKER, MCPI, estimate_json, mcpi, one_line_refusal
from documentation import DOCS, json_keys
from hypothesis import given
from hypothesis import strategies as st

from mcpi_coordinator.cli.main import main
from mcpi_coordinator.run.parts import Part, combine, parse_part, part_streams
from mcpi_coordinator.run.prefix import Prefix, reference_prefix
from mcpi_coordinator.run.statistics import pi_statistics
from mcpi_coordinator.testing.processes import not_warming, still_running, wait_until_gone

# An odd count: 31 chunks, the last of 1 point. Parts of 3: chunks 0..9, 10..19, 20..30.
POINTS, CHUNK, SEED = 3_000_001, 100_000, 2026
RUN = ("--points", str(POINTS), "--chunk-size", str(CHUNK), "--seed", str(SEED))
SAME = ("inside", "points", "requested_points", "seed", "chunk_size", "chunks", "kernel",
        "pi", "error", "std_error", "ci95", "repeat_command")  # fmt: skip
"""What a combined run shares with the single run, value for value."""


def write(path: Path, document: dict[str, Any]) -> str:
    path.write_text(json.dumps(document), encoding="utf-8")
    return str(path)


# ------------------------------------------------------------------ the bounds


@given(st.integers(1, 10**7).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, min(n, 5000)))))
def test_the_parts_cover_every_chunk_exactly_once_in_order(n_and_k: tuple[int, int]) -> None:
    n, k = n_and_k
    spans = [part_streams(n, index, k) for index in range(1, k + 1)]
    assert spans[0].start == 0 and spans[-1].stop == n
    assert all(a.stop == b.start for a, b in itertools.pairwise(spans))  # no gap, no overlap
    sizes = {len(span) for span in spans}
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1  # never empty, even to a chunk


def test_every_small_split_covers_every_chunk_once() -> None:
    for n in range(1, 60):
        for k in range(1, n + 1):
            covered = [s for i in range(1, k + 1) for s in Part(i, k).streams(n)]
            assert covered == list(range(n)), (n, k)


@given(st.integers(1, 2**53), st.integers(1, 2**40), st.integers(1, 64))
def test_the_parts_points_add_up_to_the_run(points: int, chunk_size: int, k: int) -> None:
    chunks = -(-points // chunk_size)
    if k > chunks:
        with pytest.raises(ValueError, match="at most"):
            Part(1, k).points(points, chunk_size)
        return
    assert sum(Part(i, k).points(points, chunk_size) for i in range(1, k + 1)) == points


def test_part_syntax() -> None:
    assert parse_part("2/3") == Part(2, 3) and str(Part(2, 3)) == "2/3"
    for bad in ("0/3", "4/3", "3", "a/b", "-1/3", "1/0", "1/3/4", ""):
        with pytest.raises(ValueError):
            parse_part(bad)


def test_a_parts_prefix_counts_its_own_streams_only() -> None:
    prefix = Prefix(POINTS, CHUNK, part=Part(3, 3))
    assert (prefix.first, prefix.end, list(prefix.missing())[:2]) == (20, 31, [20, 21])
    with pytest.raises(ValueError, match="not a chunk of this part 3/3"):
        prefix.add(19, 0)
    for stream in range(30, 19, -1):  # any order: the prefix fills when the gap does
        prefix.add(stream, 0)
    assert prefix.complete and prefix.points == 1_000_001 and prefix.counted()[0][-1] == 1
    # A range's result settles at once, by the part's own bounds too.
    middle = Prefix(POINTS, CHUNK, part=Part(2, 3))
    with pytest.raises(ValueError, match="not all chunks of this part 2/3"):
        middle.add_run(19, [0, 0])
    middle.add_run(15, [5] * 5)
    assert middle.k == 0 and middle.has_any(14, 2) and not middle.has_any(10, 5)
    middle.add_run(10, [1] * 5)
    assert middle.complete and (middle.inside, middle.points) == (30, 1_000_000)


@pytest.mark.parametrize("seed", [0, 7, 2**64 - 1])
def test_reference_parts_add_up_to_the_reference_run(seed: int) -> None:
    points, chunk = 123_457, 1_000  # 124 chunks, the last of 457 points
    whole = reference_prefix(seed, points, chunk)
    for k in (1, 2, 5, 124):
        parts = [reference_prefix(seed, points, chunk, part=Part(i, k)) for i in range(1, k + 1)]
        assert sum(p.inside for p in parts) == whole.inside and sum(p.points for p in parts) == points


# ------------------------------------------------------------------ real runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The single run, and its three parts on 1, 2 and 3 real workers, as files."""
    folder = tmp_path_factory.mktemp("parts")
    single = estimate_json(*RUN, "--workers", "1")
    files = []
    for index, workers in ((1, 1), (2, 2), (3, 3)):
        part = estimate_json(*RUN, "--workers", str(workers), "--part", f"{index}/3")
        files.append(write(folder / f"part{index}.json", part))
    return {"single": single, "files": files, "folder": folder}


@pytest.mark.slow
def test_three_parts_on_real_workers_combine_to_the_single_run(runs: dict[str, Any]) -> None:
    single, files = runs["single"], runs["files"]
    parts = [json.loads(Path(f).read_text()) for f in files]
    assert [p["part"] for p in parts] == [
        {"index": 1, "of": 3, "first_chunk": 0, "chunks": 10},
        {"index": 2, "of": 3, "first_chunk": 10, "chunks": 10},
        {"index": 3, "of": 3, "first_chunk": 20, "chunks": 11},
    ]
    assert [p["points"] for p in parts] == [1_000_000, 1_000_000, 1_000_001]
    assert all(p["requested_points"] == POINTS and p["stopped_early"] is None for p in parts)
    assert single["part"] is None and single["inside"] == reference_prefix(SEED, POINTS, CHUNK).inside
    combined = mcpi("combine", "--json", *files)
    assert combined.returncode == 0, combined.stderr
    document = json.loads(combined.stdout)
    assert {key: document[key] for key in SAME} == {key: single[key] for key in SAME}
    assert [(p["index"], p["file"]) for p in document["parts"]] == [(1, files[0]), (2, files[1]), (3, files[2])]
    assert document["workers"] == 1 + 2 + 3
    # The text says the same, in the words and digits of mcpi estimate's own table.
    text = mcpi("combine", *files)
    alone = mcpi("estimate", *RUN, "--workers", "2")
    assert text.returncode == 0 and alone.returncode == 0, (text.stderr, alone.stderr)
    estimate_rows = alone.stdout.splitlines()[:5]  # π, error, standard error, 95% CI, points
    assert text.stdout.splitlines()[:5] == estimate_rows
    assert f"all 3 combined: 1 {files[0]} (chunks 0..9); 2 {files[1]} (chunks 10..19)" in text.stdout
    assert f"same count as: {single['repeat_command']}" in text.stdout
    # Order of the files does not matter, and '-' reads them from stdin.
    lines = "".join(Path(f).read_text() + "\n" for f in reversed(files))
    piped = mcpi("combine", "--json", "-", stdin=lines)
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["inside"] == single["inside"]


def test_a_part_says_it_is_a_part_in_its_text() -> None:
    run = mcpi("estimate", *RUN, "--workers", "1", "--part", "2/3")
    assert run.returncode == 0, run.stderr
    assert "part            2 of 3: chunks 10..19 of 31 (1,000,000 of 3,000,001 points)" in run.stdout
    assert "the estimate is of this part alone" in run.stdout
    assert "points          1,000,000 in 10 chunks of up to 100,000" in run.stdout


@pytest.mark.slow
def test_parts_on_other_pools_and_orders_combine_to_the_same_count(runs: dict[str, Any]) -> None:
    folder: Path = runs["folder"]
    # Part 1 one request at a time on 2 workers; part 2 on workers that crash after 2
    # results (its chunks retried, out of order: a piece carries at most a quarter of
    # what is left, so 2 workers x 2 results never cover its 10 chunks); part 3 checked
    # chunk by chunk (--verify 1).
    first = estimate_json(*RUN, "--workers", "2", "--pipeline-depth", "1", "--part", "1/3")
    crashing = estimate_json(*RUN, "--workers", "2", "--part", "2/3",
                             "--worker-cmd", f"{FAKE_WORKER} --crash-after 2")  # fmt: skip
    checked = estimate_json(*RUN, "--workers", "2", "--verify", "1", "--part", "3/3")
    assert crashing["restarts"] >= 1 and checked["verified_chunks"] == 11
    others = [write(folder / f"other{i}.json", doc) for i, doc in enumerate((first, crashing, checked), 1)]
    for files in (others, [runs["files"][0], others[1], runs["files"][2]]):  # and mixed with the first set
        combined = mcpi("combine", "--json", *files)
        assert combined.returncode == 0, combined.stderr
        document = json.loads(combined.stdout)
        assert {key: document[key] for key in SAME} == {key: runs["single"][key] for key in SAME}


def _run_until_first_commit(args: tuple[str, ...], wal: Path) -> None:
    """Start ``mcpi estimate``; SIGKILL it just after its first commit (mid-run), and
    check that none of its workers outlived it."""
    process = psutil.Popen(
        [*MCPI, "estimate", "--json", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    workers: set[int] = set()
    wal_at_start = wal.stat().st_size if wal.exists() else 0
    try:
        deadline = time.monotonic() + 60
        while not (wal.exists() and wal.stat().st_size > wal_at_start):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the part never committed a chunk"
            try:
                workers.update(child.pid for child in process.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.005)
        # The log grows while SQLite writes a commit's frames: let it finish (the next
        # commit is half a second away) so the kill falls between commits.
        time.sleep(0.1)
        assert process.poll() is None, "the part finished before it could be killed mid-run"
        process.kill()
        process.wait(timeout=30)
        workers = set(not_warming(workers))  # numba's cache-warming process is no worker
        left, _ = wait_until_gone(workers, 60.0)  # a bound against a hang
        assert not left, f"workers {left} outlived their SIGKILLed coordinator"
    finally:
        if process.poll() is None:
            process.kill()
        for pid in still_running(workers):
            psutil.Process(pid).kill()


@pytest.mark.slow
def test_a_checkpointed_part_stopped_and_killed_resumes_to_the_same_count(runs: dict[str, Any], tmp_path: Path) -> None:
    path, wal = tmp_path / "part2.db", tmp_path / "part2.db-wal"
    # The stop does not race the clock: the worker answers three requests, then never
    # again, so the part cannot end before --max-time however slow the machine, and
    # --max-time is long enough for a loaded machine to start the worker and count them.
    stalling = ("--worker-cmd", f"{FAKE_WORKER} --hang-after 3", "--workers", "1", "--startup-timeout", "300")
    stopped = estimate_json(*RUN, *stalling, "--part", "2/3", "--checkpoint", str(path), "--max-time", "10")
    assert stopped["stopped_early"] == "max_time" and stopped["part"]["index"] == 2
    assert stopped["repeat_command"] is None and stopped["points"] < 1_000_000
    early = write(tmp_path / "early.json", stopped)
    one_line_refusal(
        mcpi("combine", runs["files"][0], early, runs["files"][2]),
        f"{early}: part 2 of 3 stopped early (max_time) after {stopped['points']:,} of its 1,000,000 points",
    )
    # Another part's options are refused before anything starts: the file is part 2's.
    one_line_refusal(mcpi("estimate", "--resume", str(path), "--part", "1/3"), "--part 2/3, not --part 1/3")
    held = stopped["saved_chunks"]
    assert 3 <= held < 10  # three answers, of one or more chunks each
    # 0.3 s a stream on one worker (one stream a request: more is over the pool's 0.25 s
    # a piece): a kill after the first commit lands mid-run however fast the box.
    paced = ("--worker-cmd", f"{FAKE_WORKER} --slow 0.3", "--workers", "1")
    _run_until_first_commit(("--resume", str(path), *paced), wal)
    resumed = estimate_json("--resume", str(path), "--workers", "2")
    assert resumed["part"] == {"index": 2, "of": 3, "first_chunk": 10, "chunks": 10}
    assert resumed["stopped_early"] is None and resumed["saved_chunks"] == 10
    assert resumed["resumed_chunks"] > held  # the killed run's commit was kept
    finished = write(tmp_path / "resumed.json", resumed)
    combined = mcpi("combine", "--json", runs["files"][0], finished, runs["files"][2])
    assert combined.returncode == 0, combined.stderr
    assert json.loads(combined.stdout)["inside"] == runs["single"]["inside"]


def test_estimate_refusals_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one_line_refusal(mcpi("estimate", *RUN, "--part", "1/3", "--target-error", "1e-3"),
                     "--part and --target-error do not mix")  # fmt: skip
    path = tmp_path / "whole.db"
    cases = [
        (("--part", "1/32"), "--part 1/32: a run of 31 chunks has at most 31 parts"),
        (("--part", "4/3"), "'4/3': part I/K needs 1 <= I <= K"),
        (("--part", "half"), "'half' is not I/K"),
        (("--part", "1/40", "--checkpoint", str(path)), "has at most 31 parts"),
    ]
    for args, message in cases:  # in this process: nothing starts before the refusal
        with pytest.raises(SystemExit) as stopped:
            main(["estimate", *RUN, *args])
        out, err = capsys.readouterr()
        assert stopped.value.code == 2 and out == "", err
        assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not path.exists()  # refused before the file was made


# ------------------------------------------------------------------ combine's refusals


def _combine_in_process(capsys: pytest.CaptureFixture[str], *files: str) -> tuple[int, str, str]:
    code = main(["combine", *files])
    out, err = capsys.readouterr()
    return code, out, err


def test_an_empty_part_file_is_named_as_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """'mcpi estimate --part 1/2 --json > part1.json' that failed (a usage error) or has
    not ended leaves an empty file: say so, not 'Expecting value: line 1 column 1'."""
    empty = tmp_path / "part1.json"
    empty.write_text("\n", encoding="utf-8")
    code, out, err = _combine_in_process(capsys, str(empty))
    assert (code, out) == (2, "")
    assert err == (
        f"mcpi combine: error: {empty}: empty: did its 'mcpi estimate --part ... --json > {empty}' fail, "
        "or not end yet?\n"
    )


@pytest.fixture
def documents(runs: dict[str, Any]) -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = [json.loads(Path(f).read_text()) for f in runs["files"]]
    return documents


def test_combine_refuses_what_does_not_make_one_whole_run(
    runs: dict[str, Any], documents: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one, two, three = runs["files"]

    made = iter(range(1000))

    def changed(index: int, **fields: Any) -> str:
        """Part ``index``'s document with ``fields`` changed, in a file of its own."""
        return write(tmp_path / f"changed{next(made)}.json", {**documents[index - 1], **fields})

    (tmp_path / "corrupt.json").write_text('{"pi": 3.14, "inside": ', encoding="utf-8")
    (tmp_path / "nan.json").write_text(json.dumps(documents[1]).replace('"error": ', '"error": NaN, "x": '))
    (tmp_path / "list.json").write_text("[1, 2]", encoding="utf-8")
    whole = write(tmp_path / "whole.json", runs["single"])
    cases = [
        ((one, two), "missing part 3 of 3 (given: 1 in"),
        ((one, two, three, two), f"{two}: part 2/3 again (already in {two})"),
        ((one, changed(2, seed=SEED + 1), three), "a part of another run: seed 2027,"),
        ((one, changed(2, chunk_size=CHUNK * 2), three), "part 2 of 3 of 16 chunks is chunks 5..9"),
        ((one, changed(2, part={"index": 5, "of": 40, "first_chunk": 3, "chunks": 1}), three),
         "part 5/40 is not a part of a run of 31 chunks"),
        ((one, changed(2, kernel="python"), three), "kernel python"),
        ((one, changed(2, part={"index": 2, "of": 4, "first_chunk": 7, "chunks": 8}), three),
         "part 2 of 4 has 1,000,000 points, not its 800,000"),
        ((one, changed(2, part={"index": 2, "of": 4, "first_chunk": 7, "chunks": 8}, points=800_000, inside=0,
                       pi=pi_statistics(0, 800_000).pi), three), "kernel numpy, 4 parts, not"),
        ((one, changed(2, part={"index": 2, "of": 3, "first_chunk": 9, "chunks": 10}), three),
         "is chunks 10..19, not the 10 from 9 it names"),
        ((one, changed(2, inside=documents[1]["inside"] + 1), three), "its pi"),
        ((one, changed(2, points=999_999), three), "has 999,999 points, not its 1,000,000"),
        ((one, changed(2, inside=-1), three), "inside is -1, not a whole number >= 0"),
        ((one, changed(2, inside=True), three), "inside is True"),
        ((one, str(tmp_path / "corrupt.json"), three), "corrupt.json: not the JSON mcpi estimate --part I/K --json"),
        ((one, str(tmp_path / "nan.json"), three), "nan.json: not the JSON mcpi estimate --part I/K --json prints "
         "(NaN is not a number mcpi writes)"),
        ((str(tmp_path / "list.json"),), "list.json: not the JSON object"),
        ((one, str(tmp_path / "absent.json")), "absent.json: cannot read it: No such file or directory"),
        ((whole, one, two, three), f"{whole}: a whole run (no --part), which combines only alone, not with "
         f"parts such as {one}"),
        ((one, two, three, whole), f"{whole}: a whole run (no --part), which combines only alone"),
        ((whole, whole), f"{whole}: part 1/1 again"),
        ((write(tmp_path / "{}.json", {}),), "not the JSON mcpi estimate --part I/K --json prints (it has no 'seed')"),
        (("-", "-"), "- (stdin) is given more than once"),
    ]  # fmt: skip
    for files, message in cases:
        code, out, err = _combine_in_process(capsys, *files)
        assert code == 2 and out == "", (files, err)
        assert err.startswith("mcpi combine: error: ") and len(err.strip().splitlines()) == 1, err
        assert message in err, (message, err)
    # And from a real process: one line, exit 2.
    one_line_refusal(mcpi("combine", one, three), "missing part 2 of 3")
    one_line_refusal(mcpi("combine", "-", stdin=""), "stdin: empty")
    assert mcpi("combine").returncode == 2  # no file at all is a usage error


def test_a_whole_run_alone_combines_to_itself(
    runs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole = write(tmp_path / "whole.json", runs["single"])
    assert main(["combine", "--json", whole]) == 0
    document = json.loads(capsys.readouterr().out)
    assert {key: document[key] for key in SAME} == {key: runs["single"][key] for key in SAME}
    stopped = write(tmp_path / "stopped.json", {**runs["single"], "stopped_early": "max_time"})
    code, out, err = _combine_in_process(capsys, stopped)
    assert (code, out) == (2, "") and "the whole run stopped early (max_time)" in err


def test_combine_is_a_pure_sum_of_checked_parts(documents: list[dict[str, Any]]) -> None:
    combined = combine([(f"p{i}", doc) for i, doc in enumerate(documents, 1)])
    assert combined.inside == sum(doc["inside"] for doc in documents) and combined.points == POINTS
    assert combined.chunks == 31 and [p.part.index for p in combined.parts] == [1, 2, 3]


def test_every_part_and_combine_json_field_is_in_the_docs(
    runs: dict[str, Any], documents: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["combine", "--json", *runs["files"]]) == 0
    fields = set(json_keys(documents[0])) | set(json_keys(json.loads(capsys.readouterr().out)))
    assert {field for field in fields if f"`{field}`" not in DOCS and f'"{field}"' not in DOCS} == set()
    assert "## One run, many coordinators" in DOCS
