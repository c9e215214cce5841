#!/usr/bin/env python3
"""An mcpi worker written from protocol.md alone: a second implementation, to test the document.

It imports nothing from mcpi. The wire is ``struct`` and ``msgpack`` (§2-§3), the rules
are the document's (§4-§9), and the kernels are §11's definitions: NumPy's SeedSequence
and SFC64 for ``numpy`` (§11.2 defines the kernel as exactly NumPy's generator), CPython's
``random.Random`` seeded as §11.3 says for ``python``. One reader thread answers what it
can at once (``ping``, refusals, ``cancel`` of a queued request) and queues samples for
one compute thread (``jobs`` = 1), which checks a stop flag between blocks of points.

    python tests/spec_worker.py [--versions 1,2] [--max-inflight N]

``--versions 1`` plays a worker from before stream ranges. Where protocol.md was found
ambiguous while writing this, the section it now settles is named in a comment.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
from collections import OrderedDict
from typing import Any

import msgpack

NAME = "spec-worker/1"
MAX_FRAME = 1_048_576  # §2
MAX_POINTS = 1 << 40  # §3 `points`
UINT64_MAX = (1 << 64) - 1
MAX_TEXT = 4096  # §3 rule 11, code points
MAX_LIST = 64
MAX_GROUPS = 4096  # §6.1
MAX_STREAMS = 1 << 20  # §6.1
MAX_DEPTH = 16  # §3 rule 5
QUOTE = 64  # §8 "Messages"
KERNELS = ("numpy", "python")
BLOCK = 1 << 18  # points between two looks at the stop flag (§7: stop within ~50 ms)


class Fatal(Exception):
    """A fatal error (§8): one error with a nil id, then nothing; exit 3."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Refused(Exception):
    """A per-request error for ``request_id``, or fatal when there is no usable id (§6)."""

    def __init__(self, code: str, message: str, request_id: int | None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


def quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= QUOTE else text[: QUOTE - 1] + "…"


def one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


# ---------------------------------------------------------------- §2-§3: frames


def frame(body: dict[str, Any]) -> bytes:
    payload = msgpack.packb(body, use_bin_type=True)
    return struct.pack(">I", len(payload)) + payload


def _pairs(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    for key, _ in pairs:
        if type(key) is not str:  # rule 2: str keys at every level (not bin, not int)
            raise Fatal("malformed_frame", f"a map key is a {type(key).__name__}, not a str")
    mapping = dict(pairs)
    if len(mapping) != len(pairs):  # rule 6
        raise Fatal("malformed_frame", "a map holds the same key twice")
    return mapping


def _ext(code: int, data: bytes) -> Any:
    raise Fatal("malformed_frame", f"extension type {code}")  # rule 4


def _plain(value: Any, depth: int) -> None:
    """Rules 4 and 5 over the decoded object (the timestamp extension bypasses ext_hook)."""
    if isinstance(value, (dict, list)):
        if depth > MAX_DEPTH:
            raise Fatal("malformed_frame", f"containers nested deeper than {MAX_DEPTH}")
        for item in value.values() if isinstance(value, dict) else value:
            _plain(item, depth + 1)
    elif not (value is None or type(value) in (bool, int, float, str, bytes)):
        raise Fatal("malformed_frame", f"a {type(value).__name__} is not plain msgpack data")


def decode_body(payload: bytes) -> dict[str, Any]:
    """Rules 1-6, for the whole frame, before anything else (rule 13)."""
    try:
        body = msgpack.unpackb(
            payload, raw=False, strict_map_key=False, object_pairs_hook=_pairs, ext_hook=_ext, use_list=True
        )
    except Fatal:
        raise
    except Exception as exc:  # trailing bytes, a body ending inside its object, bad UTF-8, ...
        raise Fatal("malformed_frame", f"not one msgpack object: {type(exc).__name__}") from None
    if not isinstance(body, dict):
        raise Fatal("malformed_frame", f"the body is a {type(body).__name__}, not a map")
    _plain(body, 1)
    return body


class Frames:
    """Bytes in, bodies out; the length is checked as soon as the header is in (§2)."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def bodies(self, data: bytes) -> Any:
        self.buffer += data
        while len(self.buffer) >= 4:
            (length,) = struct.unpack_from(">I", self.buffer)
            if length == 0:
                raise Fatal("malformed_frame", "zero-length frame")
            if length > MAX_FRAME:
                raise Fatal("frame_too_large", f"frame of {length} bytes exceeds the {MAX_FRAME}-byte limit")
            if len(self.buffer) < 4 + length:
                return
            payload = bytes(self.buffer[4 : 4 + length])
            del self.buffer[: 4 + length]
            yield decode_body(payload)

    def eof(self) -> None:
        if self.buffer:
            raise Fatal("truncated_frame", f"end of file inside a frame ({len(self.buffer)} bytes)")


# ---------------------------------------------------------------- §3-§4, §8: messages


def is_uint64(value: Any) -> bool:
    return type(value) is int and 0 <= value <= UINT64_MAX  # rule 9: booleans are not integers


def _uint64(value: Any) -> bool:
    return is_uint64(value)


def _positive(value: Any) -> bool:
    return is_uint64(value) and value >= 1


def _points(value: Any) -> bool:
    return is_uint64(value) and value <= MAX_POINTS


def _text(value: Any) -> bool:
    return type(value) is str and len(value) <= MAX_TEXT


def _versions(value: Any) -> bool:
    return type(value) is list and 1 <= len(value) <= MAX_LIST and all(map(_positive, value))


# §4.1, in table order (the order fields are checked in, §8 precedence step 3).
FIELDS: dict[str, list[tuple[str, Any, bool]]] = {
    "hello": [("versions", _versions, True), ("client", _text, True), ("expected_points", _uint64, False)],
    "sample": [
        ("id", _uint64, True), ("seed", _uint64, True), ("stream", _uint64, True),
        ("points", _points, True), ("kernel", _text, True),
        ("streams", _positive, False), ("group", _positive, False),
    ],
    "ping": [("id", _uint64, True)],
    "cancel": [("id", _uint64, True)],
    "shutdown": [],
}  # fmt: skip
REQUESTS = ("sample", "ping")


def usable_id(body: dict[str, Any]) -> int | None:
    """§6: an id a bad message can be answered under. A known type that is never
    answered by id (hello, cancel, shutdown) has none; a missing, non-str or unknown
    type does, when ``id`` is a uint64."""
    kind = body.get("type")
    if type(kind) is str and kind in FIELDS and kind not in REQUESTS:
        return None
    request_id = body.get("id")
    return request_id if is_uint64(request_id) else None


def check(body: dict[str, Any]) -> dict[str, Any]:
    """§8 precedence steps 2-3; raises ``Refused``. Unknown keys are ignored (rule 8)."""
    kind = body.get("type")
    if type(kind) is not str:
        raise Refused("invalid_request", "missing or non-string 'type'", usable_id(body))
    if kind not in FIELDS:
        raise Refused("unknown_type", f"unknown message type {quote(kind)}", usable_id(body))
    for name, valid, required in FIELDS[kind]:
        if name not in body:
            if required:
                raise Refused("invalid_request", f"{kind}: missing field {name!r}", usable_id(body))
        elif not valid(body[name]):
            raise Refused("invalid_request", f"{kind}: bad {name!r}: {quote(body[name])}", usable_id(body))
    return body


# ---------------------------------------------------------------- §11: kernels


def _seed_sequence(seed: int, stream: int) -> Any:
    import numpy as np

    return np.random.SeedSequence(seed, spawn_key=(stream,))


def count_numpy(seed: int, stream: int, points: int, stop: threading.Event) -> int:
    """§11.2: SFC64 float32 draws, x from the low half, inside in float32 arithmetic."""
    import numpy as np

    generator = np.random.Generator(np.random.SFC64(_seed_sequence(seed, stream)))
    inside = 0
    left = points
    while left:
        if stop.is_set():
            raise InterruptedError
        n = min(left, BLOCK)
        draws = generator.random(2 * n, dtype=np.float32)
        x, y = draws[0::2], draws[1::2]
        inside += int(np.count_nonzero(x * x + y * y < np.float32(1.0)))
        left -= n
    return inside


def count_python(seed: int, stream: int, points: int, stop: threading.Event) -> int:
    """§11.3: random.Random(s), s the first four words of generate_state, low word first."""
    import numpy as np

    words = _seed_sequence(seed, stream).generate_state(4, np.uint32)
    rnd = random.Random(sum(int(w) << (32 * k) for k, w in enumerate(words)))
    inside = 0
    for done in range(points):
        if done % 8192 == 0 and stop.is_set():
            raise InterruptedError
        x = rnd.random()
        y = rnd.random()
        inside += x * x + y * y < 1.0
    return inside


COUNT = {"numpy": count_numpy, "python": count_python}


def count_range(request: dict[str, Any], stop: threading.Event) -> list[int]:
    """§6.1: one count per group of ``group`` consecutive streams (the last may be shorter)."""
    streams = request.get("streams", 1)
    group = request.get("group", streams)
    counts: list[int] = []
    for offset in range(streams):
        if stop.is_set():  # a stream of no points checks nothing itself (§7: stop within ~50 ms)
            raise InterruptedError
        inside = COUNT[request["kernel"]](request["seed"], request["stream"] + offset, request["points"], stop)
        if offset % group == 0:
            counts.append(0)
        counts[-1] += inside
    return counts


def is_range(request: dict[str, Any]) -> bool:
    """§6.1: a range has ``streams`` other than 1, or any ``group``; ``streams: 1`` alone
    means what its absence means (the "Versions" paragraph)."""
    return request.get("streams", 1) != 1 or "group" in request


# ---------------------------------------------------------------- §5-§9: the connection


class Connection:
    """Both threads' shared state; every change and every write under ``lock``."""

    def __init__(self, out_fd: int, versions: list[int], max_inflight: int) -> None:
        self.out_fd = out_fd
        self.versions = versions
        self.max_inflight = max_inflight
        self.lock = threading.Condition()
        self.state = "await_hello"  # -> serving -> closing -> done (or done via a fatal error)
        self.version = 0
        self.queued: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self.running: dict[str, Any] | None = None
        self.stop = threading.Event()
        self.exit_code: int | None = None
        self.pending: list[bytes] = []

    # -- writing (lock held)

    def send(self, body: dict[str, Any]) -> None:
        if self.exit_code is None:
            self.pending.append(frame(body))

    def error(self, request_id: int | None, code: str, message: str) -> None:
        self.send({"type": "error", "id": request_id, "code": code, "message": one_line(message)})

    def flush(self) -> None:
        data, self.pending = b"".join(self.pending), []
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.out_fd, view) :]
        except OSError:  # EPIPE: the coordinator is gone (§9); exit 0, write nothing more
            self.pending.clear()
            self.finish(0)

    def finish(self, code: int) -> None:
        if self.exit_code is None:
            self.exit_code = code
            self.stop.set()
            self.lock.notify_all()

    def fatal(self, code: str, message: str) -> None:
        self.error(None, code, message)
        self.flush()
        sys.stderr.write(f"spec-worker: fatal protocol error: {code}: {one_line(message)}\n")
        self.finish(1 if code == "internal" else 3)

    # -- reading (the reader thread, lock held)

    def on_bytes(self, frames: Frames, data: bytes) -> None:
        try:
            if not data:
                frames.eof()
                self.close()
                return
            for body in frames.bodies(data):
                try:
                    self.on_message(check(body))
                except Refused as refused:
                    if refused.request_id is None:  # nobody to tell: fatal (§8)
                        raise Fatal(refused.code, str(refused)) from None
                    self.error(refused.request_id, refused.code, str(refused))
                if self.state not in ("await_hello", "serving"):
                    return  # bytes after shutdown are not read (§9)
        except Fatal as fatal:
            self.fatal(fatal.code, str(fatal))

    def on_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "hello":
            if self.state == "serving":
                raise Fatal("invalid_request", "a second hello")
            common = set(message["versions"]) & set(self.versions)
            if not common:
                raise Fatal("unsupported_version", f"no common version in {quote(message['versions'])}")
            self.version = max(common)
            self.state = "serving"
            self.send({
                "type": "welcome", "version": self.version, "worker": NAME, "pid": os.getpid(),
                "host": socket.gethostname()[:MAX_TEXT], "kernels": list(KERNELS),
                "max_inflight": self.max_inflight, "max_frame": MAX_FRAME, "max_points": MAX_POINTS, "jobs": 1,
            })  # fmt: skip
        elif kind == "shutdown":
            self.close()
        elif kind == "cancel":
            request = self.queued.pop(message["id"], None)
            if request is not None:
                self.error(message["id"], "cancelled", "cancelled before it started")
            elif self.running is not None and self.running["id"] == message["id"]:
                self.stop.set()
            # anything else (unknown, answered, before hello): nothing (§7)
        elif self.state == "await_hello":
            self.error(message["id"], "handshake_required", "send hello first")
        elif message["id"] in self.queued or (self.running is not None and self.running["id"] == message["id"]):
            self.error(message["id"], "duplicate_id", f"id {message['id']} is already outstanding")
        elif kind == "ping":
            self.send({"type": "pong", "id": message["id"]})
        else:
            self.on_sample(message)

    def on_sample(self, request: dict[str, Any]) -> None:
        """§8 precedence steps 7-8."""
        request_id = request["id"]
        streams = request.get("streams", 1)
        groups = -(-streams // request.get("group", streams))
        if request["kernel"] not in KERNELS:
            why = f"unknown kernel {quote(request['kernel'])}; this worker offers {', '.join(KERNELS)}"
            self.error(request_id, "unknown_kernel", why)
        elif is_range(request) and self.version < 2:
            self.error(request_id, "invalid_request", "'streams' and 'group' need protocol version 2")
        elif request["stream"] + streams - 1 > UINT64_MAX:
            self.error(request_id, "invalid_request", "the range goes past stream 2**64-1")
        elif streams > MAX_STREAMS:
            self.error(request_id, "invalid_request", f"{streams} streams is above {MAX_STREAMS}")
        elif streams * request["points"] > MAX_POINTS:
            self.error(request_id, "invalid_request", f"{streams} x {request['points']} points is above max_points")
        elif groups > MAX_GROUPS:
            self.error(request_id, "invalid_request", f"{groups} groups is above {MAX_GROUPS}")
        elif len(self.queued) + (self.running is not None) >= self.max_inflight:
            self.error(request_id, "busy", f"{self.max_inflight} samples already outstanding")
        else:
            self.queued[request_id] = request
            self.lock.notify_all()

    def close(self) -> None:
        """§9: queued requests answered ``cancelled`` (not computed), the running one stopped."""
        self.state = "closing"
        for request_id in self.queued:
            self.error(request_id, "cancelled", "the worker is shutting down")
        self.queued.clear()
        if self.running is None:
            self.flush()
            self.finish(0)
        else:
            self.stop.set()

    # -- the compute thread

    def compute_loop(self) -> None:
        while True:
            with self.lock:
                while not self.queued and self.exit_code is None:
                    self.lock.wait()
                if self.exit_code is not None:
                    return
                _, request = self.queued.popitem(last=False)
                self.running = request
                self.stop.clear()
            started = time.perf_counter()
            try:
                counts: list[int] | None = count_range(request, self.stop)
                why = ""
            except InterruptedError:
                counts, code, why = None, "cancelled", "cancelled before it finished"
            except Exception as exc:  # a kernel bug fails one request (§8 `internal`)
                counts, code, why = None, "internal", f"{type(exc).__name__}: {exc}"
            elapsed = time.perf_counter() - started
            with self.lock:
                self.running = None
                if counts is None:
                    self.error(request["id"], code, why)
                else:
                    result = {
                        "type": "result", "id": request["id"], "inside": sum(counts),
                        "points": request.get("streams", 1) * request["points"], "elapsed_s": elapsed,
                    }  # fmt: skip
                    if is_range(request):
                        result["insides"] = counts
                    self.send(result)
                self.flush()
                if self.state == "closing" and not self.queued:
                    self.finish(0)


def reader_loop(connection: Connection, in_fd: int) -> None:
    frames = Frames()
    try:
        while True:
            try:
                data = os.read(in_fd, 65536)
            except OSError:
                data = b""
            with connection.lock:
                connection.on_bytes(frames, data)
                connection.flush()
                if connection.state not in ("await_hello", "serving") or connection.exit_code is not None:
                    return
    except BaseException as exc:  # this worker itself broke: fatal `internal`, exit 1
        with connection.lock:
            connection.fatal("internal", f"reader crashed: {type(exc).__name__}: {exc}")


def main() -> int:
    parser = argparse.ArgumentParser(description="An mcpi worker written from protocol.md alone.")
    parser.add_argument("--versions", default="1,2", help="protocol versions spoken (default 1,2)")
    parser.add_argument("--max-inflight", type=int, default=8)
    args = parser.parse_args()
    versions = [int(v) for v in args.versions.split(",")]
    if not set(versions) <= {1, 2} or args.max_inflight < 1:
        parser.error("--versions takes 1 and/or 2; --max-inflight at least 1")
    # §10.1: frames go to a private copy of fd 1; fd 1 itself now points at stderr.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    if not os.isatty(0):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # §10.4
    connection = Connection(out_fd, versions, args.max_inflight)
    threading.Thread(target=connection.compute_loop, daemon=True).start()
    threading.Thread(target=reader_loop, args=(connection, 0), daemon=True).start()
    with connection.lock:
        while connection.exit_code is None:
            connection.lock.wait()
        return connection.exit_code


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    os._exit(code)  # a kernel still running on a daemon thread must not delay the exit
