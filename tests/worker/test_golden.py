"""protocol.md is the contract: its golden frames, vectors and kernel table, checked here.

Everything is parsed out of protocol.md itself, so the document cannot drift from the
code without this file failing.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from types import SimpleNamespace

import msgpack
import numpy as np
import pytest
from worker_process import WorkerUnderTest

from mcpi_worker import kernels
from mcpi_worker.protocol import (
    COORDINATOR_MESSAGES,
    NEED_DATA,
    WORKER_MESSAGES,
    Error,
    ErrorCode,
    FatalProtocolError,
    FrameDecoder,
    Pong,
    Result,
    Sample,
    encode,
    parse_message,
)

SPEC = Path(__file__).resolve().parents[2] / "protocol.md"
SPEC_TEXT = SPEC.read_text(encoding="utf-8")


def fenced_blocks(label_pattern: str) -> dict[str, str]:
    """Fenced blocks whose info string matches ``label_pattern`` (one group: the name)."""
    found = re.findall(rf"^```{label_pattern}\n(.*?)^```$", SPEC_TEXT, re.M | re.S)
    return dict(found)


def parse_golden_frame(block: str) -> tuple[dict, bytes]:
    lines = block.strip().splitlines()
    assert lines[0].startswith("# "), "a golden frame starts with its JSON form"
    value = json.loads(lines[0][2:])
    data = bytes.fromhex("".join(lines[1:]))
    return value, data


GOLDEN_FRAMES = {
    name: parse_golden_frame(block) for name, block in fenced_blocks(r"golden:(\S+)").items()
}


def accept_table(value: dict) -> dict[str, type]:
    return COORDINATOR_MESSAGES if value["type"] in COORDINATOR_MESSAGES else WORKER_MESSAGES


def test_the_spec_has_every_required_golden_frame() -> None:
    required = {"hello", "welcome", "sample", "result", "error", "fatal_error"}
    required |= {"ping", "pong", "cancel", "cancelled", "shutdown"}
    assert required <= set(GOLDEN_FRAMES)


@pytest.mark.parametrize("name", sorted(GOLDEN_FRAMES))
def test_golden_frame_is_its_json_value(name: str) -> None:
    value, data = GOLDEN_FRAMES[name]
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    assert msgpack.unpackb(data[4:]) == value
    assert list(msgpack.unpackb(data[4:])) == list(value), "key order is wire order"


@pytest.mark.parametrize("name", sorted(GOLDEN_FRAMES))
def test_code_accepts_and_produces_exactly_the_golden_bytes(name: str) -> None:
    value, data = GOLDEN_FRAMES[name]
    expected = parse_message(value, accept_table(value))
    decoder = FrameDecoder(accept_table(value))
    decoder.feed(data)
    assert decoder.next_message() == expected
    assert decoder.next_message() is NEED_DATA
    assert encode(expected) == data


def test_golden_result_answers_the_golden_sample() -> None:
    sample = parse_message(GOLDEN_FRAMES["sample"][0], COORDINATOR_MESSAGES)
    result = parse_message(GOLDEN_FRAMES["result"][0], WORKER_MESSAGES)
    assert isinstance(sample, Sample) and isinstance(result, Result)
    assert result.id == sample.id and result.points == sample.points
    kernel = kernels.KERNELS[sample.kernel]
    assert result.inside == kernel(sample.seed, sample.stream, sample.points, lambda: False)


def test_golden_fatal_error_is_what_the_decoder_says_about_text() -> None:
    value, _ = GOLDEN_FRAMES["fatal_error"]
    decoder = FrameDecoder(COORDINATOR_MESSAGES)
    decoder.feed(b"hello world\n")
    with pytest.raises(FatalProtocolError) as caught:
        decoder.next_message()
    assert (caught.value.code, caught.value.message) == (value["code"], value["message"])


def test_the_real_worker_writes_the_golden_bytes() -> None:
    """pong, the unknown-kernel error and the fatal error, byte for byte from mcpi-worker."""
    worker = WorkerUnderTest()
    try:
        worker.handshake()
        welcome_bytes = len(worker.raw_stdout)
        worker.send_bytes(GOLDEN_FRAMES["ping"][1])
        assert isinstance(worker.receive(), Pong)
        worker.send(Sample(id=2, seed=1, stream=0, points=10, kernel="cuda"))
        assert isinstance(worker.receive(), Error)
        worker.send_bytes(b"hello world\n")
        fatal_message = GOLDEN_FRAMES["fatal_error"][0]["message"]
        assert worker.receive() == Error(None, ErrorCode.FRAME_TOO_LARGE, fatal_message)
        assert worker.wait() == 3
        assert bytes(worker.raw_stdout[welcome_bytes:]) == (
            GOLDEN_FRAMES["pong"][1] + GOLDEN_FRAMES["error"][1] + GOLDEN_FRAMES["fatal_error"][1]
        )
    finally:
        worker.kill()


def test_the_real_worker_answers_the_golden_cancel_with_the_golden_cancelled_bytes() -> None:
    """A running sample with id 1 (2**40 points: it cannot finish first), then the golden
    ``cancel``: the answer is the golden ``cancelled`` frame, byte for byte, and shutdown
    then finds nothing left to answer."""
    worker = WorkerUnderTest()
    try:
        worker.handshake()
        welcome_bytes = len(worker.raw_stdout)
        worker.send(Sample(id=1, seed=12345, stream=0, points=1 << 40, kernel="numpy"))
        worker.send_bytes(GOLDEN_FRAMES["cancel"][1])
        assert worker.receive() == Error(1, ErrorCode.CANCELLED, GOLDEN_FRAMES["cancelled"][0]["message"])
        worker.send_bytes(GOLDEN_FRAMES["shutdown"][1])
        assert worker.wait() == 0
        assert bytes(worker.raw_stdout[welcome_bytes:]) == GOLDEN_FRAMES["cancelled"][1]
    finally:
        worker.kill()


def test_a_golden_ping_before_hello_is_refused_by_the_real_worker() -> None:
    worker = WorkerUnderTest()
    try:
        worker.send_bytes(GOLDEN_FRAMES["ping"][1])
        assert worker.receive() == Error(7, ErrorCode.HANDSHAKE_REQUIRED, "send hello first")
        worker.send_bytes(GOLDEN_FRAMES["shutdown"][1])
        assert worker.wait() == 0
    finally:
        worker.kill()


# ----------------------------------------------------------------- sampling


def kernel_table() -> list[tuple[str, int, int, int, int]]:
    (block,) = fenced_blocks(r"(golden-kernels)").values()
    rows = []
    for line in block.splitlines():
        if line.strip() and not line.startswith("#"):
            kernel, *numbers = line.split()
            seed, stream, points, inside = map(int, numbers)
            rows.append((kernel, seed, stream, points, inside))
    return rows


KERNEL_TABLE = kernel_table()


def test_kernel_table_covers_both_kernels() -> None:
    assert {row[0] for row in KERNEL_TABLE} == set(kernels.KERNELS)


@pytest.mark.parametrize(("kernel", "seed", "stream", "points", "inside"), KERNEL_TABLE)
def test_kernels_reproduce_the_golden_table(
    kernel: str, seed: int, stream: int, points: int, inside: int
) -> None:
    assert kernels.KERNELS[kernel](seed, stream, points, lambda: False) == inside


def spec_reference() -> SimpleNamespace:
    """Execute the standard-library-only reference implementation printed in §11.4."""
    (source,) = fenced_blocks(r"python (reference:numpy-kernel)").values()
    namespace: dict = {}
    exec(compile(source, f"{SPEC}:reference", "exec"), namespace)
    return SimpleNamespace(**namespace)


REFERENCE = spec_reference()


@pytest.mark.parametrize(
    ("seed", "stream", "points", "inside"),
    [row[1:] for row in KERNEL_TABLE if row[0] == "numpy" and row[3] <= 70_000],
)
def test_spec_reference_reproduces_the_numpy_rows(
    seed: int, stream: int, points: int, inside: int
) -> None:
    assert REFERENCE.count_numpy(seed, stream, points) == inside


@pytest.mark.parametrize(
    ("seed", "stream"), [(0, 0), (12345, 7), (2**64 - 1, 2**64 - 1), (1, 2**32), (2**40, 3)]
)
def test_spec_seed_sequence_and_sfc64_match_numpy(seed: int, stream: int) -> None:
    sequence = np.random.SeedSequence(seed, spawn_key=(stream,))
    assert REFERENCE.seed_sequence_state(seed, stream, 8) == [
        int(w) for w in sequence.generate_state(8, np.uint32)
    ]
    bit_generator = np.random.SFC64(np.random.SeedSequence(seed, spawn_key=(stream,)))
    outputs = REFERENCE.sfc64_outputs(seed, stream)
    assert [next(outputs) for _ in range(5)] == [int(w) for w in bit_generator.random_raw(5)]
    assert REFERENCE.python_kernel_seed(seed, stream) == kernels.python_seed(seed, stream)


def test_spec_python_kernel_definition_matches_the_kernel() -> None:
    # §11.3 in plain words: random.Random(python_kernel_seed), x then y, float64.
    for seed, stream, points in [(0, 0, 1000), (99, 5, 5000)]:
        rnd = random.Random(REFERENCE.python_kernel_seed(seed, stream))
        inside = 0
        for _ in range(points):
            x = rnd.random()
            y = rnd.random()
            inside += x * x + y * y < 1.0
        assert kernels.count_python(seed, stream, points) == inside


def test_debugging_vectors() -> None:
    (block,) = fenced_blocks(r"(golden-vectors)").values()
    vectors = {line.split()[0]: line.split()[1:] for line in block.strip().splitlines()}
    seed, stream = 12345, 0
    words = [int(w, 16) for w in vectors["seed_sequence_words"]]
    assert REFERENCE.seed_sequence_state(seed, stream, 6) == words
    sfc = np.random.SFC64(kernels.stream_seed_sequence(seed, stream))
    assert [int(w, 16) for w in vectors["sfc64_outputs"]] == [int(w) for w in sfc.random_raw(2)]
    block_points = next(kernels.iter_point_blocks(seed, stream, 2))
    assert [float.fromhex(v) for v in vectors["numpy_points"]] == [
        float(v) for v in block_points.reshape(-1)
    ]
    assert int(vectors["python_seed"][0], 16) == kernels.python_seed(seed, stream)
    rnd = random.Random(kernels.python_seed(seed, stream))
    assert [float(v) for v in vectors["python_randoms"]] == [rnd.random() for _ in range(4)]


@pytest.mark.parametrize("s", [0, 1, 2**32 - 1, 2**32, 2**127 + 12345, kernels.python_seed(12345, 0)])
def test_spec_mt19937_is_cpythons_random(s: int) -> None:
    """§11.3 spells out MT19937 (init_by_array, tempering) so the python kernel can be
    written in another language: the printed definition must be CPython's generator."""
    spec, cpython = REFERENCE.MT19937(s), random.Random(s)
    assert [spec.random() for _ in range(1500)] == [cpython.random() for _ in range(1500)]


@pytest.mark.parametrize(
    ("seed", "stream", "points", "inside"),
    [row[1:] for row in KERNEL_TABLE if row[0] == "python" and row[3] <= 20_000],
)
def test_spec_reference_reproduces_the_python_rows(seed: int, stream: int, points: int, inside: int) -> None:
    assert REFERENCE.count_python(seed, stream, points) == inside


def test_golden_range_result_answers_the_golden_range_sample() -> None:
    sample = parse_message(GOLDEN_FRAMES["range_sample"][0], COORDINATOR_MESSAGES)
    result = parse_message(GOLDEN_FRAMES["range_result"][0], WORKER_MESSAGES)
    assert isinstance(sample, Sample) and isinstance(result, Result)
    singles = [
        kernels.KERNELS[sample.kernel](sample.seed, s, sample.points, lambda: False)
        for s in range(sample.stream, sample.stream + sample.streams)
    ]
    assert sample.group == 2 and result.insides == (singles[0] + singles[1], singles[2] + singles[3])
    assert result.inside == sum(singles) and result.points == sample.streams * sample.points


def test_the_real_worker_answers_the_golden_range_sample() -> None:
    worker = WorkerUnderTest()
    try:
        worker.send_bytes(GOLDEN_FRAMES["hello_v2"][1])
        welcome = worker.receive()
        assert getattr(welcome, "version", None) == 2
        worker.send_bytes(GOLDEN_FRAMES["range_sample"][1])
        answer = worker.receive()
        golden = parse_message(GOLDEN_FRAMES["range_result"][0], WORKER_MESSAGES)
        assert isinstance(answer, Result) and isinstance(golden, Result)
        assert (answer.id, answer.inside, answer.points, answer.insides) == (
            golden.id, golden.inside, golden.points, golden.insides
        )  # fmt: skip
    finally:
        worker.kill()
