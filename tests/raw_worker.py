#!/usr/bin/env python3
"""A worker that breaks exactly one rule of protocol.md, for testing coordinators.

    python tests/raw_worker.py FAULT [VERSION]

Until the fault strikes it is a correct worker: it welcomes with version 2 (or the
highest the hello offers; with VERSION, that version if offered), answers pings, and
counts samples with ``spec_worker``'s kernels (written from protocol.md, importing nothing
from mcpi). The fault strikes at the first ``sample`` (or, for a few, at the hello, the
first ping or the shutdown):
``FAULTS`` says what each one writes, as raw bytes built with ``struct`` and ``msgpack``.
A bad answer carries a count that is wrong as well, so a coordinator that counted it
would give a wrong total. After the fault it goes on reading stdin until end of file
(or a signal) and writes nothing more, unless the fault says otherwise.

Exit status: 0 at end of input or shutdown; 9 (with a line on stderr) when it saw the
coordinator break a rule it watches for: the limits of its welcome (``max_points``,
``max_frame``, ``max_inflight``), and whatever the fault: a message not of protocol.md §4.1,
a request id used twice (§6), and anything sent after ``shutdown`` (it reads on until end
of input to see it).
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import sys
import termios
import threading
import time
from typing import Any

import msgpack
import spec_worker

ELAPSED = 0.001
FAULTS: dict[str, str] = {
    # §2 framing
    "zero_length": "a zero-length frame",
    "oversize_header": "a length prefix of 4 GiB, then silence (stdout stays open)",
    "trailing_bytes": "a result frame with a byte left over after its map",
    "body_ends_early": "a frame whose body ends inside its map",
    "eof_mid_frame": "half a result frame, then exit 0",
    # §3 encoding
    "not_a_map": "a frame holding an array",
    "bin_key": "a result with a bin key nested in an unknown field",
    "int_key": "a result with an integer key",
    "bad_utf8": "a result with a string that is not UTF-8",
    "ext_type": "a result carrying an extension type",
    "timestamp": "a result carrying the timestamp extension",
    "too_deep": "a result nesting 17 levels deep",
    "duplicate_key": "a result holding 'inside' twice",
    "no_type": "a result without 'type'",
    "unknown_type": "an answer of a type no worker sends ('resultat')",
    "unknown_type_no_id": "a message of a type no worker sends, without an id",
    "bool_inside": "a result whose 'inside' is true",
    "negative_elapsed": "a result whose elapsed_s is -0.5",
    "infinite_elapsed": "a result whose elapsed_s is +inf",
    "long_message": "an 'internal' error whose message is 4097 characters",
    "long_kernels": "a welcome offering 65 kernels",
    # §4.2, §8 error codes
    "unknown_code": "a per-request error with a code from the future ('quantum_flux')",
    "unknown_code_nil_id": "an error with a nil id and an unknown code",
    "fatal_code_with_id": "an error carrying the sample's id and the fatal code malformed_frame",
    # §8 refusals for good that contradict the welcome (each then serves on correctly)
    "refuse_offered_kernel": "unknown_kernel for its first sample, whose kernel its welcome offers",
    "refuse_valid": "invalid_request for its first sample, though the sample is valid",
    "refuse_fresh_id": "duplicate_id for its first sample, whose id was never used",
    "refuse_after_welcome": "handshake_required for its first sample, after its welcome",
    # §5 the coordinator's checks
    "second_welcome": "a second welcome, then the result",
    "before_welcome": "a pong before the welcome",
    "version_not_offered": "a welcome choosing version 3",
    "welcome_without_version": "a welcome with no 'version'",
    # §5 version negotiation
    "only_version_3": "a worker speaking only version 3: a hello not offering it gets the fatal "
    "unsupported_version (error with a nil id), exit 3",
    "version_1_only": "a worker written before version 2: it welcomes with version 1 and would ignore "
    "'streams' and 'group' as unknown keys; a sample carrying either is an error of the coordinator",
    "max_points_over_2_40": "a welcome whose max_points is 2**40 + 1, more than a result can report",
    "jobs_over_max_inflight": "a welcome announcing 5 jobs with max_inflight 4",
    "jobs_1025": "a welcome announcing 1025 jobs (and max_inflight 1025), above the limit of 1024",
    "implementations_short": "a welcome naming 1 implementation for its 2 kernels",
    "serial_jobs_1024": "a welcome announcing 1024 jobs (max_inflight 1024); it computes one sample at a time",
    # what a worker leaves behind
    "setsid_child": "answers its first sample, forks a child that calls setsid() and keeps the worker's stdout "
    "and stderr (its pid appended to the file $RAW_WORKER_PIDFILE), and exits 0",
    "child_holds_pipes": "at its first sample forks a child in its own process group that keeps the worker's "
    "stdout and stderr (its pid appended to $RAW_WORKER_PIDFILE), and exits 0 with the sample unanswered",
    "setpgid_child": "as child_holds_pipes, but the child first moves to a process group of its own (setpgid)",
    # what a worker does to its pipes and to itself
    "dribble": "answers its first sample correctly, one byte every 0.1 s",
    "stall_mid_frame": "half a result frame, then silence with stdout open (it reads on)",
    "max_frame_then_eof": "a length prefix of exactly max_frame (1 MiB), then exit 0",
    "max_frame_then_stall": "a length prefix of exactly max_frame (1 MiB) and half its body, then silence",
    "close_stdout": "closes its stdout at its first sample and reads on, answering nothing",
    "close_stdin": "closes its stdin at its first sample, answers it, and sleeps for a minute",
    "sigstop": "stops itself (SIGSTOP) at its first sample",
    "deaf": "ignores SIGTERM, SIGINT and SIGHUP and sleeps for a minute at its first sample, reading nothing "
    "(each of those signals it gets is appended by name to the file $RAW_WORKER_SIGNALS, if set)",
    "slow_welcome": "waits $RAW_WORKER_DELAY seconds before its welcome",
    "dev_tty": "opens /dev/tty and writes a line on it at the hello (the outcome on stderr), then serves",
    "unknown_id": "a result for an id never sent",
    "answered_twice": "the right result, twice",
    "pong_for_sample": "a pong answering a sample",
    "result_for_ping": "a result answering a ping",
    "points_differ": "a result with one point more than asked",
    "inside_exceeds": "a result with more inside than points",
    "eof_outstanding": "exit 0 with the sample unanswered",
    "eof_before_welcome": "exit 0 on hello, nothing written",
    # §6.1 ranges
    "insides_missing": "a range's result without 'insides'",
    "insides_on_plain": "a plain sample's result with 'insides'",
    "insides_wrong_length": "a range's result with one count too few",
    "group_over_points": "a range's result with a group counting more than its points",
    "insides_bad_sum": "a range's result whose counts do not add up to 'inside'",
    # §2: frames need not line up with reads
    "split_frames": "a correct worker whose every write is cut into pieces of 1 to 7 bytes (inside headers, "
    "across frames), each written once the coordinator has read the one before",
    # §3 rules 8-10: what a receiver must accept
    "unknown_keys": "a correct worker whose every message carries unknown keys (nested maps, bin, nil, floats)",
    "wide_encodings": "a correct worker encoding every value in its widest form: uint64, float 32, str 32, "
    "array 32, map 32",
    # §3 rule 12
    "implementation_nil": "a result whose optional 'implementation' is nil (nil is not absence)",
    # §8: an error's message is one line
    "multiline_message": "an 'internal' error whose message runs over two lines",
    # §3 rule 10: a value two implementers could read differently, and valid
    "negative_zero_elapsed": "its first result with elapsed_s -0.0 (equal to 0: valid), then a correct worker",
    # rules the coordinator must keep, watched (exit 9 if broken)
    "max_points_1000": "welcome max_points 1000; a larger sample is an error of the coordinator",
    "max_frame_40": "welcome max_frame 40; a larger frame is an error of the coordinator",
    "max_frame_14": "welcome max_frame 14, too small for any message (a shutdown is 15 bytes); any frame "
    "after the welcome is an error of the coordinator",
    "max_inflight_1": "welcome max_inflight 1; a second outstanding sample is an error of the coordinator",
    # §10.2 stderr
    "stderr_not_json": "lines on stderr that are not JSON (nor UTF-8), then a correct worker",
    "stderr_flood_on_shutdown": "on shutdown, 2 MiB on stderr before exiting 0",
    "stderr_no_newlines": "64 MiB on stderr without a newline, then 16 lines of 1 MiB each, then a correct worker",
}


REFUSALS: dict[str, str] = {
    "unknown_code": "quantum_flux",
    "refuse_offered_kernel": "unknown_kernel",
    "refuse_valid": "invalid_request",
    "refuse_fresh_id": "duplicate_id",
    "refuse_after_welcome": "handshake_required",
}
"""Faults answering the first sample with a per-request ``error`` that is not retryable,
and its code: a refusal no request our coordinator sends can have earned."""

CONTINUES = frozenset(
    {*REFUSALS, "serial_jobs_1024", "dribble", "sigstop", "dev_tty", "negative_zero_elapsed"}
)
"""Faults after which the worker serves on correctly (the rest fall silent).

With ``$RAW_WORKER_ONCE`` (a path), a fault of ``REFUSALS`` strikes only in the first
worker that creates that file: the others serve correctly from the start (so a run whose
worker 0 is replaced by the same command meets the fault once)."""

PROCESS_FAULTS = frozenset(
    {"child_holds_pipes", "setpgid_child", "dribble", "close_stdout", "close_stdin", "sigstop", "deaf"}
)
"""Faults in what the worker does at its first sample rather than in what it answers."""

MAX_FRAME_FAULTS = {"max_frame_40": 40, "max_frame_14": 14}
"""Faults whose welcome announces a small ``max_frame``, and the limit each one watches."""

RANGE_FAULTS = frozenset({"insides_missing", "insides_wrong_length", "group_over_points", "insides_bad_sum"})
"""Faults in the per-group counts of a range's result."""


COORDINATOR_TYPES = frozenset({"hello", "sample", "ping", "cancel", "shutdown"})
"""The messages a coordinator may send (protocol.md §4.1), on either version."""


def frame(body: Any) -> bytes:
    payload = msgpack.packb(body, use_bin_type=True)
    return struct.pack(">I", len(payload)) + payload


def raw_frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def wide(value: Any) -> bytes:
    """``value`` in msgpack's widest encodings (valid, never the shortest): integers as uint64
    or int64, floats as float 32, str 32, array 32, map 32."""
    if isinstance(value, bool) or value is None:
        return msgpack.packb(value)
    if isinstance(value, int):
        return b"\xcf" + struct.pack(">Q", value) if value >= 0 else b"\xd3" + struct.pack(">q", value)
    if isinstance(value, float):
        return b"\xca" + struct.pack(">f", value)
    if isinstance(value, str):
        data = value.encode()
        return b"\xdb" + struct.pack(">I", len(data)) + data
    if isinstance(value, list):
        return b"\xdd" + struct.pack(">I", len(value)) + b"".join(map(wide, value))
    assert isinstance(value, dict)
    return b"\xdf" + struct.pack(">I", len(value)) + b"".join(wide(k) + wide(v) for k, v in value.items())


def with_pair(body: dict[str, Any], key: bytes, value: bytes) -> bytes:
    """``body`` packed with one more pair, given as raw msgpack bytes (a fixmap, < 15 keys)."""
    packed = msgpack.packb(body)
    assert packed[0] == 0x80 | len(body)
    return bytes([0x80 | (len(body) + 1)]) + packed[1:] + key + value


def fixmap(*pairs: tuple[str, Any]) -> bytes:
    """A map built pair by pair, so that a key may appear twice (msgpack fixmap, < 16 pairs)."""
    return bytes([0x80 | len(pairs)]) + b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in pairs)


class RawWorker:
    def __init__(self, fault: str, version: int | None = None) -> None:
        self.fault = fault
        self.speaks = {1, 2} if version is None else {version}
        """The versions it chooses from: both, or the one the command line names."""
        self.out = os.dup(1)
        os.dup2(2, 1)
        self.struck = False
        self.spared = fault in REFUSALS and not _first_to_strike()
        """A refusal fault that struck in another worker of the run ($RAW_WORKER_ONCE)."""
        self.outstanding = 0
        self.violation: str | None = None
        self.request_ids: set[Any] = set()
        self.stop = threading.Event()

    def write(self, data: bytes) -> None:
        if not data:
            return  # nothing to say (its stdout may be closed: close_stdout)
        if self.fault == "split_frames":
            self.write_in_pieces(data)
            return
        try:
            os.write(self.out, data)  # one small write: all of it or EPIPE
        except OSError:
            os._exit(0)

    def write_in_pieces(self, data: bytes) -> None:
        """Write ``data`` in pieces of 1, 2, ... 7 bytes, each once the coordinator has read
        all before it (the pipe's unread bytes, FIONREAD, are 0), so each is a read of its
        own; after 10 s of waiting for a reader it writes on regardless."""
        start, size = 0, 1
        while start < len(data):
            try:
                os.write(self.out, data[start : start + size])
            except OSError:
                os._exit(0)
            start, size = start + size, size % 7 + 1
            deadline = time.monotonic() + 10
            while self.unread() > 0 and time.monotonic() < deadline:
                time.sleep(0.0005)

    def unread(self) -> int:
        """Bytes in our stdout pipe the coordinator has not read (Linux: FIONREAD on either end)."""
        return int(struct.unpack("i", fcntl.ioctl(self.out, termios.FIONREAD, b"\0" * 4))[0])

    def encode(self, body: dict[str, Any]) -> bytes:
        """One correct message as a frame, in the forms ``unknown_keys`` and
        ``wide_encodings`` choose (msgpack's shortest otherwise)."""
        if self.fault == "unknown_keys":
            future = {"nested": [1, b"\x00bin", None, {"k": 2.5}], "flag": True}
            return frame({"zz_future": future, **body, "aa_later": -7})
        if self.fault == "wide_encodings":
            return raw_frame(wide(body))
        return frame(body)

    def welcome(self, versions: list[int]) -> bytes:
        body = {
            "type": "welcome", "version": max(set(versions) & self.speaks), "worker": "raw-worker",
            "pid": os.getpid(), "host": "raw", "kernels": ["numpy", "python"], "max_inflight": 4,
            "max_frame": 1 << 20, "max_points": 1 << 40,
        }  # fmt: skip
        if self.fault == "version_not_offered":
            body["version"] = 3
        elif self.fault == "welcome_without_version":
            del body["version"]
        elif self.fault == "version_1_only":
            body["version"] = 1
        elif self.fault == "max_points_over_2_40":
            body["max_points"] = (1 << 40) + 1
        elif self.fault == "long_kernels":
            body["kernels"] = ["numpy"] * 65
        elif self.fault == "max_points_1000":
            body["max_points"] = 1000
        elif self.fault in MAX_FRAME_FAULTS:
            body["max_frame"] = MAX_FRAME_FAULTS[self.fault]
        elif self.fault == "max_inflight_1":
            body["max_inflight"] = 1
        elif self.fault == "jobs_over_max_inflight":
            body["jobs"] = 5
        elif self.fault in ("jobs_1025", "serial_jobs_1024"):
            body["jobs"] = body["max_inflight"] = 1025 if self.fault == "jobs_1025" else 1024
        elif self.fault == "implementations_short":
            body["implementations"] = ["numpy"]
        return self.encode(body)

    def result(self, request: dict[str, Any], counts: list[int], *, lie: int = 0, **changes: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": "result", "id": request["id"], "inside": sum(counts) + lie,
            "points": request.get("streams", 1) * request["points"], "elapsed_s": ELAPSED,
        }  # fmt: skip
        if spec_worker.is_range(request):
            body["insides"] = counts
        body.update(changes)
        return body

    def strike(self, request: dict[str, Any]) -> bytes | None:
        """The bytes answering the first sample when the fault is in that answer (None:
        this fault is not about samples). A bad answer says every point fell inside: a
        count no coordinator may take (the true one is never that, for 10 points or more)."""
        streams = request.get("streams", 1)
        group = request.get("group", streams)
        per_group = [min(group, streams - start) * request["points"] for start in range(0, streams, group)]
        wrong = self.result(request, per_group)
        rid, points = request["id"], wrong["points"]

        def good() -> dict[str, Any]:
            return self.result(request, spec_worker.count_range(request, self.stop))

        answers: dict[str, Any] = {
            "zero_length": lambda: struct.pack(">I", 0),
            "oversize_header": lambda: struct.pack(">I", 0xFFFFFFFF),
            "trailing_bytes": lambda: raw_frame(msgpack.packb(wrong) + b"\xc0"),
            "body_ends_early": lambda: raw_frame(msgpack.packb(wrong)[:-3]),
            "eof_mid_frame": lambda: frame(wrong)[:10],
            "stall_mid_frame": lambda: frame(wrong)[:10],
            "max_frame_then_eof": lambda: struct.pack(">I", 1 << 20),
            "max_frame_then_stall": lambda: struct.pack(">I", 1 << 20) + bytes(1 << 19),
            "not_a_map": lambda: frame([wrong]),
            "bin_key": lambda: frame({**wrong, "extra": {b"k": 1}}),
            "int_key": lambda: raw_frame(with_pair(wrong, msgpack.packb(1), msgpack.packb(2))),
            "bad_utf8": lambda: raw_frame(with_pair(wrong, msgpack.packb("x"), b"\xa2\xff\xfe")),
            "ext_type": lambda: frame({**wrong, "extra": msgpack.ExtType(5, b"x")}),
            "timestamp": lambda: frame({**wrong, "extra": msgpack.Timestamp(0)}),
            "too_deep": lambda: frame({**wrong, "extra": _nested(16)}),  # the map, then 16 levels
            "duplicate_key": lambda: raw_frame(
                fixmap(
                    ("type", "result"),
                    ("id", rid),
                    ("inside", points),
                    ("points", points),
                    ("elapsed_s", ELAPSED),
                    ("inside", points - 1),
                )
            ),
            "no_type": lambda: frame({k: v for k, v in wrong.items() if k != "type"}),
            "unknown_type": lambda: frame({**wrong, "type": "resultat"}),
            "unknown_type_no_id": lambda: frame({"type": "progress", "done": 0.5}),
            "bool_inside": lambda: frame({**wrong, "inside": True}),
            "negative_elapsed": lambda: frame({**wrong, "elapsed_s": -0.5}),
            "infinite_elapsed": lambda: frame({**wrong, "elapsed_s": float("inf")}),
            "long_message": lambda: frame({"type": "error", "id": rid, "code": "internal", "message": "é" * 4097}),
            **{
                fault: (lambda code=code: frame({"type": "error", "id": rid, "code": code, "message": "new"}))
                for fault, code in REFUSALS.items()
            },
            "unknown_code_nil_id": lambda: frame({"type": "error", "id": None, "code": "quantum_flux", "message": "x"}),
            "fatal_code_with_id": lambda: frame({"type": "error", "id": rid, "code": "malformed_frame", "message": ""}),
            "second_welcome": lambda: self.welcome([1, 2]) + frame(wrong),
            "unknown_id": lambda: frame({**wrong, "id": (rid + 2**63) % 2**64}),
            "answered_twice": lambda: frame(good()) * 2,
            "pong_for_sample": lambda: frame({"type": "pong", "id": rid}),
            "points_differ": lambda: frame({**wrong, "points": points + 1}),
            "inside_exceeds": lambda: frame({**wrong, "inside": points + 1}),
            "eof_outstanding": lambda: b"",
            "insides_missing": lambda: frame({k: v for k, v in wrong.items() if k != "insides"}),
            "insides_on_plain": lambda: frame({**wrong, "insides": [points]}),
            "insides_wrong_length": lambda: frame({**wrong, "insides": per_group[:-1]}),
            # one group over its points, the next under, so that only that check can fail
            "group_over_points": lambda: frame(
                self.result(request, [per_group[0] + 1, per_group[1] - 1, *per_group[2:]])
            ),
            "insides_bad_sum": lambda: frame({**wrong, "inside": points - 1}),
            "implementation_nil": lambda: frame({**wrong, "implementation": None}),
            "multiline_message": lambda: frame({"type": "error", "id": rid, "code": "internal", "message": "a\nb"}),
            "negative_zero_elapsed": lambda: frame({**good(), "elapsed_s": -0.0}),
        }
        answer = answers.get(self.fault)
        return None if answer is None else answer()

    def serve(self) -> int:
        if self.fault == "stderr_not_json":
            os.write(2, b'plain text, not JSON\n{"event": "half a JSON object\n\xff\xfe not UTF-8 \xc0\n')
            os.write(2, b"x" * 10000 + b"\n")
        if self.fault == "stderr_no_newlines":
            block = b"no newline " * (1 << 16)
            for _ in range((64 << 20) // len(block)):
                os.write(2, block)
            for _ in range(16):
                os.write(2, b"\n" + b"y" * (1 << 20))
            os.write(2, b"\n")
        buffer = b""
        welcomed = False
        while True:
            data = os.read(0, 65536)
            if not data:
                return self.end()
            buffer += data
            replies = []
            samples_in_read = 0
            while len(buffer) >= 4:
                (length,) = struct.unpack_from(">I", buffer)
                if len(buffer) < 4 + length:
                    break
                limit = MAX_FRAME_FAULTS.get(self.fault)
                if limit is not None and welcomed and length > limit:
                    self.violation = f"the coordinator sent a {length}-byte frame; max_frame is {limit}"
                body = spec_worker.decode_body(buffer[4 : 4 + length])
                buffer = buffer[4 + length :]
                kind = body.get("type")
                if kind not in COORDINATOR_TYPES:
                    self.violation = f"the coordinator sent a message of type {kind!r}"
                if kind in ("sample", "ping"):
                    if body.get("id") in self.request_ids:
                        self.violation = f"the coordinator used request id {body.get('id')} twice"
                    self.request_ids.add(body.get("id"))
                if kind == "hello":
                    if self.fault == "eof_before_welcome":
                        return 0
                    if self.fault == "only_version_3" and 3 not in body["versions"]:
                        message = f"no common version in {body['versions']}; this worker speaks 3"
                        error = {"type": "error", "id": None, "code": "unsupported_version", "message": message}
                        self.write(frame(error))
                        sys.stderr.write(f"raw-worker: fatal protocol error: unsupported_version: {message}\n")
                        return 3
                    if self.fault == "slow_welcome":
                        time.sleep(float(os.environ["RAW_WORKER_DELAY"]))
                    if self.fault == "dev_tty":
                        self.write_to_terminal()
                    before = frame({"type": "pong", "id": 1}) if self.fault == "before_welcome" else b""
                    replies.append(before + self.welcome(body["versions"]))
                    welcomed = True
                elif kind == "shutdown":
                    self.write(b"".join(replies))
                    if self.fault == "stderr_flood_on_shutdown":
                        line = b"flood " + b"x" * 1017 + b"\n"
                        for _ in range(2048):
                            os.write(2, line)
                    return self.after_shutdown(buffer)
                elif kind == "ping":
                    if self.fault == "result_for_ping" and not self.struck:
                        self.struck = True
                        result = {"type": "result", "id": body["id"], "inside": 0, "points": 0, "elapsed_s": ELAPSED}
                        replies.append(frame(result))
                    elif not self.struck:
                        replies.append(self.encode({"type": "pong", "id": body["id"]}))
                elif kind == "sample" and not self.struck and self.fault in PROCESS_FAULTS:
                    self.write(b"".join(replies))
                    replies.clear()
                    self.struck = True
                    ended = self.process_fault(body)
                    if ended is not None:
                        return ended
                elif kind == "sample":
                    samples_in_read += 1
                    replies.append(self.on_sample(body, samples_in_read))
                    if self.fault == "setsid_child":
                        self.write(b"".join(replies))
                        self.leave_setsid_child()
                        return 0
                    if self.fault == "serial_jobs_1024":  # each answer as soon as it is counted
                        self.write(b"".join(replies))
                        replies.clear()
            self.write(b"".join(replies))
            if self.fault in ("eof_mid_frame", "eof_outstanding", "max_frame_then_eof") and self.struck:
                return 0

    def on_sample(self, request: dict[str, Any], in_read: int) -> bytes:
        if self.fault == "version_1_only" and request.keys() & {"streams", "group"}:
            # A worker before version 2 would count one stream of it (protocol.md §1, §6.1).
            self.violation = f"the coordinator sent a range on a version-1 connection: {request}"
            request = {k: v for k, v in request.items() if k not in ("streams", "group")}
        points = request.get("streams", 1) * request["points"]
        if self.fault == "max_points_1000" and points > 1000:
            self.violation = f"the coordinator sent a sample of {points} points; max_points is 1000"
        if self.fault == "max_inflight_1" and in_read > 1:
            # Each sample is answered in the write after the read that brought it, so
            # two in one read were both outstanding at once.
            self.violation = "the coordinator had 2 samples outstanding; max_inflight is 1"
        if self.struck and self.fault not in CONTINUES:
            return b""  # after the fault: silence
        # A fault in the answer to a range waits for a range of two groups or more (the
        # pool's first piece for a worker is one stream).
        groups = -(-request.get("streams", 1) // (request.get("group") or request.get("streams", 1)))
        unripe = self.fault in RANGE_FAULTS and groups < 2
        answer = None if self.struck or self.spared or unripe else self.strike(request)
        if answer is None:  # this fault is not in an answer, or has struck: a correct one
            return self.encode(self.result(request, spec_worker.count_range(request, self.stop)))
        self.struck = True
        return answer

    def process_fault(self, request: dict[str, Any]) -> int | None:
        """Strike a fault of ``PROCESS_FAULTS`` at the first sample, ``request``; return
        the exit status if the worker ends here, None if it reads on. Its pid is first
        appended to $RAW_WORKER_STRUCK, if set: a test waits for that, not for a time."""
        struck = os.environ.get("RAW_WORKER_STRUCK")
        if struck:
            with open(struck, "a", encoding="ascii") as notice:
                notice.write(f"{os.getpid()}\n")
        if self.fault in ("child_holds_pipes", "setpgid_child"):
            self.leave_child(os.setpgrp if self.fault == "setpgid_child" else None)
            return 0
        if self.fault == "dribble":
            for byte in frame(self.result(request, spec_worker.count_range(request, self.stop))):
                self.write(bytes([byte]))
                time.sleep(0.1)
        elif self.fault == "close_stdout":
            os.close(self.out)
        elif self.fault == "close_stdin":
            os.close(0)
            self.write(frame(self.result(request, spec_worker.count_range(request, self.stop))))
            time.sleep(60)
            return 0
        elif self.fault == "sigstop":
            os.kill(os.getpid(), signal.SIGSTOP)
            self.write(frame(self.result(request, spec_worker.count_range(request, self.stop))))
        elif self.fault == "deaf":
            path = os.environ.get("RAW_WORKER_SIGNALS")

            def note(signum: int, _frame: object) -> None:
                assert path is not None
                with open(path, "a", encoding="ascii") as noted:
                    noted.write(f"{signal.Signals(signum).name}\n")

            for deaf_to in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(deaf_to, note if path else signal.SIG_IGN)
            time.sleep(60)  # a signal's handler runs, and the sleep goes on (PEP 475)
            return 0
        return None

    def write_to_terminal(self) -> None:
        """Try to write on the controlling terminal; say on stderr how that went."""
        try:
            with open("/dev/tty", "w", encoding="ascii") as terminal:
                terminal.write("raw-worker was here, on your terminal\n")
        except OSError as error:
            os.write(2, f"dev_tty: {error.strerror}\n".encode())
        else:
            os.write(2, b"dev_tty: written\n")

    def leave_setsid_child(self) -> None:
        """Fork a child in a session of its own (no process group of the coordinator's
        reaches it) holding our stdout and stderr; it sleeps for a minute at most."""
        self.leave_child(os.setsid)

    def leave_child(self, leave: Any) -> None:
        """Fork a child holding our stdout and stderr, after it calls ``leave`` (None: it
        stays in our process group); it sleeps for a minute at most. Its pid is appended
        to $RAW_WORKER_PIDFILE."""
        ready_r, ready_w = os.pipe()
        child = os.fork()
        if child == 0:
            if leave is not None:
                leave()
            os.close(ready_w)  # where it is going now: the worker may exit
            time.sleep(60)
            os._exit(0)
        os.close(ready_w)
        os.read(ready_r, 1)  # end of file once the child has closed its end
        path = os.environ.get("RAW_WORKER_PIDFILE")
        if path:
            with open(path, "a", encoding="ascii") as pids:
                pids.write(f"{child}\n")

    def after_shutdown(self, buffer: bytes) -> int:
        """Read on until end of input (a worker reads nothing after ``shutdown``; this one
        watches): any byte after the ``shutdown`` frame is the coordinator's error (§9)."""
        while not buffer:
            try:
                buffer = os.read(0, 65536)
            except OSError:
                break
            if not buffer:
                break
        if buffer:
            self.violation = f"the coordinator sent {buffer[:16].hex()}... after shutdown"
        return self.end()

    def end(self) -> int:
        if self.violation is not None:
            sys.stderr.write(f"raw-worker: {self.violation}\n")
            return 9
        return 0


def _first_to_strike() -> bool:
    """Whether this worker is the first to create ``$RAW_WORKER_ONCE`` (True without it)."""
    path = os.environ.get("RAW_WORKER_ONCE")
    if not path:
        return True
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


def _nested(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or sys.argv[1] not in FAULTS or sys.argv[2:] not in ([], ["1"], ["2"]):
        sys.exit(f"usage: raw_worker.py FAULT [1|2]; faults: {', '.join(FAULTS)}")
    status = RawWorker(sys.argv[1], int(sys.argv[2]) if len(sys.argv) == 3 else None).serve()
    sys.stderr.flush()
    os._exit(status)
