"""A blocking test harness around one real ``mcpi-worker`` process.

Every wait has a timeout, so a misbehaving worker fails a test instead of hanging
it. Two daemon threads drain stdout (decoding frames with the coordinator-side
``FrameDecoder``) and stderr (keeping its lines), as a real coordinator must.
"""

from __future__ import annotations

import fcntl
import os
import queue
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Final

from mcpi_worker.protocol import (
    NEED_DATA,
    PROTOCOL_VERSIONS,
    WORKER_MESSAGES,
    FrameDecoder,
    Hello,
    Message,
    ProtocolError,
    Welcome,
    encode,
)

TIMEOUT: Final[float] = 60.0
"""A hang guard, not a deadline: CI is a loaded 2-core machine, where a worker's start
has taken more than 20 s once (a frame sent before it started was answered only after
the guard had fired, with no sign of why: ``receive`` now says what the worker was doing)."""
PATIENT_START_S: Final[float] = 300.0
"""``startup_timeout`` for a pool of real workers in a test not about that timeout: the
default 10 s is a real-clock bound that a start can pass on a machine at extreme load
(a start slower than that is retried, and each retry can be as slow)."""

TESTS: Final = Path(__file__).resolve().parent
RAW_WORKER: Final = str(TESTS / "raw_worker.py")
"""A worker that breaks exactly one rule: ``python RAW_WORKER FAULT``."""
SPEC_WORKER: Final = str(TESTS / "spec_worker.py")
"""A worker written from protocol.md alone: ``python SPEC_WORKER``."""


def worker_command() -> list[str]:
    """The installed ``mcpi-worker`` script beside this interpreter, else ``-m``."""
    script = Path(sys.executable).parent / "mcpi-worker"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "mcpi_worker"]


class EndOfOutput(Exception):
    """The worker's stdout reached end of file."""


class WorkerUnderTest:
    def __init__(
        self,
        *args: str,
        stdin: int | None = subprocess.PIPE,
        env: dict[str, str] | None = None,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.proc = subprocess.Popen(
            [*worker_command(), *args],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=None if env is None else {**os.environ, **env},
            pass_fds=pass_fds,
        )
        self.raw_stdout = bytearray()
        self._messages: queue.Queue[Message | ProtocolError | EndOfOutput] = queue.Queue()
        self._stderr_lines: list[str] = []
        self._stderr_done = threading.Event()
        # The drain thread reads a duplicate of the pipe's fd that only it closes: reading
        # ``proc.stdout``'s own fd by number, it went on reading after ``kill`` closed that
        # fd, from the next worker's stdout pipe once the number was reused, and took that
        # worker's answers (its test then timed out with nothing unread in its pipe).
        assert self.proc.stdout is not None
        stdout_fd = os.dup(self.proc.stdout.fileno())
        threading.Thread(target=self._drain_stdout, args=(stdout_fd,), daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    # -- writing

    def send(self, message: Message) -> None:
        self.send_bytes(encode(message))

    def send_bytes(self, data: bytes) -> None:
        """Write ``data``; a worker that already hung up is not an error here.

        A worker refuses a hostile frame as soon as it has read the header and exits,
        so the rest of the bytes may meet a closed pipe (EPIPE), depending on how
        much of them fit in the pipe buffer first. What the worker answered and its
        exit code are what the tests assert on.
        """
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    # -- reading

    def receive(self, timeout: float = TIMEOUT) -> Message:
        try:
            item = self._messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message from the worker within {timeout} s; {self.doing()}") from None
        if isinstance(item, (ProtocolError, EndOfOutput)):
            raise item
        return item

    def doing(self) -> str:
        """What the worker is doing, for a failure's message: whether it runs, where each of
        its threads waits in the kernel, and its stderr so far."""
        code = self.proc.poll()
        if code is not None:
            where = f"exited with {code}"
        else:
            threads = []
            for task in sorted(Path(f"/proc/{self.pid}/task").glob("*")):
                try:
                    stat = (task / "stat").read_text().rsplit(")", 1)[1].split()
                    wchan = (task / "wchan").read_text() or "-"
                except OSError:
                    continue  # a thread that ended meanwhile
                threads.append(f"{task.name} {stat[0]} {wchan} cpu {int(stat[11]) + int(stat[12])} ticks")
            where = "running; threads: " + ", ".join(threads)
        pipes = []
        for name, stream in (("stdin", self.proc.stdin), ("stdout", self.proc.stdout)):
            try:  # Linux answers FIONREAD on either end of a pipe: bytes written, not yet read
                unread = struct.unpack("i", fcntl.ioctl(stream.fileno(), termios.FIONREAD, b"\0" * 4))[0]  # type: ignore[union-attr]
            except (OSError, ValueError, AttributeError):
                continue
            pipes.append(f"{unread} bytes unread in its {name} pipe")
        return (
            f"the worker (pid {self.pid}) is {where}; {', '.join(pipes)}; {len(self.raw_stdout)} bytes read from "
            f"its stdout; stderr so far: {''.join(self._stderr_lines)!r}"
        )

    def receive_many(self, count: int) -> list[Message]:
        return [self.receive() for _ in range(count)]

    def assert_no_message(self, timeout: float = 0.3) -> None:
        try:
            item = self._messages.get(timeout=timeout)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message from the worker: {item}")

    def handshake(self) -> Welcome:
        self.send(Hello(versions=PROTOCOL_VERSIONS, client="tests"))
        welcome = self.receive()
        assert isinstance(welcome, Welcome), welcome
        return welcome

    def wait(self, timeout: float = TIMEOUT) -> int:
        return self.proc.wait(timeout=timeout)

    def wait_with_peak_rss(self, timeout: float = TIMEOUT) -> tuple[int, int]:
        """Reap the worker with ``wait4``: its exit code and its peak RSS in bytes.

        Linux carries the spawning process's RSS high-water mark into the child's
        ``ru_maxrss`` across exec, so this is at least the test runner's own peak:
        compare it with ``control_peak_rss()`` taken the same way, not with a constant.
        """
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            if pid == self.pid:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"the worker did not exit within {timeout} s")
            time.sleep(0.01)
        self.proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not reap again
        return self.proc.returncode, usage.ru_maxrss * 1024  # ru_maxrss is in KiB on Linux

    def stderr_text(self, timeout: float = TIMEOUT) -> str:
        """All of stderr; waits until the worker has closed it (so, exited)."""
        if not self._stderr_done.wait(timeout):
            raise AssertionError("the worker's stderr is still open")
        return "".join(self._stderr_lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    # -- draining

    def _drain_stdout(self, fd: int) -> None:
        """Read ``fd`` (this thread's own duplicate of the worker's stdout) to its end, and
        close it."""
        decoder = FrameDecoder(WORKER_MESSAGES)
        try:
            while True:
                data = os.read(fd, 65536)
                if not data:
                    decoder.feed_eof()
                    self._messages.put(EndOfOutput())
                    return
                self.raw_stdout += data
                decoder.feed(data)
                while (message := decoder.next_message()) is not NEED_DATA:
                    self._messages.put(message)
        except ProtocolError as exc:
            self._messages.put(exc)
        except OSError:
            self._messages.put(EndOfOutput())
        finally:
            os.close(fd)

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        try:
            for line in iter(self.proc.stderr.readline, b""):
                self._stderr_lines.append(line.decode("utf-8", "replace"))
        except (OSError, ValueError):
            pass
        finally:
            self._stderr_done.set()


def control_peak_rss() -> int:
    """Peak RSS, measured like ``wait_with_peak_rss``, of a worker that is only started
    and told to stop: what every worker spawned from this test process reports even
    when it allocates nothing for its input."""
    control = WorkerUnderTest()
    try:
        control.close_stdin()
        _, peak = control.wait_with_peak_rss()
        return peak
    finally:
        control.kill()
