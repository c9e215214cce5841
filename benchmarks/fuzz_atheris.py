"""Coverage-guided fuzzing of the protocol decoder with atheris (optional, not in CI).

CI fuzzes with hypothesis (tests/worker/test_hostile_worker.py). This script digs deeper
for as long as you let it: libFuzzer mutates inputs toward new branches of
``mcpi_worker.protocol`` and the msgpack unpacker, feeding each input split at
fuzzer-chosen points to both decoders (the worker's and the coordinator's) and to the
fake worker's core. Anything but a documented outcome is a crash that libFuzzer
saves as ``crash-<sha1>`` for replay (``python benchmarks/fuzz_atheris.py crash-...``).

    /work/venv/bin/pip install atheris        # not a project dependency
    python benchmarks/fuzz_atheris.py                        # 60 seconds
    python benchmarks/fuzz_atheris.py -max_total_time=600    # any libFuzzer flag

Checked per input: only ``RequestError``/``FatalProtocolError`` escape the decoder;
the outcome does not depend on how the bytes were split; at most one frame's worth
stays buffered; the fake worker answers with well-formed frames only.
"""

from __future__ import annotations

import sys

try:
    import atheris
except ImportError:
    sys.exit("atheris is not installed: pip install atheris (Linux, CPython >= 3.8)")

with atheris.instrument_imports():
    import msgpack  # noqa: F401  (instrumented too: its fallback paths are fuzzed)

    from mcpi_coordinator.testing.script import FakeBehaviour, FakeWorkerCore, WriteStdout
    from mcpi_worker import protocol
    from mcpi_worker.protocol import NEED_DATA, FatalProtocolError, FrameDecoder, RequestError

TABLES = (protocol.COORDINATOR_MESSAGES, protocol.WORKER_MESSAGES)


def outcomes(chunks: list[bytes], accept: dict[str, type]) -> list[object]:
    """Feed chunks as a reader does, draining after each, then EOF; record every outcome."""
    decoder = FrameDecoder(accept)
    seen: list[object] = []
    for chunk in [*chunks, None]:
        try:
            decoder.feed_eof() if chunk is None else decoder.feed(chunk)
        except FatalProtocolError as exc:  # EOF inside a frame
            return [*seen, ("fatal", exc.code)]
        while True:
            try:
                message = decoder.next_message()
            except RequestError as exc:
                seen.append(("request_error", exc.code, exc.request_id))
                continue
            except FatalProtocolError as exc:
                return [*seen, ("fatal", exc.code)]
            if message is NEED_DATA:
                break
            seen.append(message)
        if decoder.buffered >= protocol.HEADER.size + protocol.MAX_FRAME:
            raise AssertionError(f"{decoder.buffered} bytes buffered: more than one frame")
    return seen


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    cuts = sorted(provider.ConsumeIntListInRange(provider.ConsumeIntInRange(0, 8), 0, 4096))
    payload = provider.ConsumeBytes(provider.remaining_bytes())
    pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    for accept in TABLES:
        whole = outcomes([payload], accept)
        if whole != outcomes(pieces, accept):
            raise AssertionError(f"outcome depends on the split at {cuts}")
    core = FakeWorkerCore(FakeBehaviour(), pid=1, host="fuzz")
    written = b"".join(
        a.data for a in core.receive_data(payload, now=0.0) if isinstance(a, WriteStdout)
    )
    decoder = FrameDecoder(protocol.WORKER_MESSAGES)
    decoder.feed(written)
    while decoder.next_message() is not NEED_DATA:
        pass
    if not decoder.at_frame_boundary:
        raise AssertionError("the fake worker wrote a partial frame")


def main() -> None:
    argv = list(sys.argv)
    if not any(arg.startswith(("-max_total_time", "-runs")) for arg in argv[1:]):
        argv.append("-max_total_time=60")
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
