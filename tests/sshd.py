"""A real OpenSSH server on 127.0.0.1 for the remote-worker tests.

``SshDaemon`` runs ``sshd -D -e`` as the current user on a free port, with a
throwaway host key, client key, ``authorized_keys`` and ``known_hosts`` in a
private directory. The tests reach it exactly as a user reaches a remote machine:
``mcpi estimate --host user@127.0.0.1:PORT --ssh-option IdentityFile=... ...``.

Only a missing OpenSSH installation is a reason to skip (``require_openssh``); once
the binaries are there, a daemon that does not come up is a test error, so a broken
setup cannot hide behind a skip.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

START_TIMEOUT_S = 15.0
"""Bound on sshd coming up; generous because CI is a loaded 2-core box."""

_SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")

_PRIVSEP_DIR = Path("/run/sshd")
"""sshd started as root refuses to run unless its privilege-separation directory exists;
the distribution's service unit creates it at boot, which never happens in a container."""


@dataclass(frozen=True)
class OpenSsh:
    sshd: str
    ssh: str
    ssh_keygen: str


def find_openssh() -> OpenSsh | None:
    sshd = shutil.which("sshd") or next(
        (path for path in _SSHD_CANDIDATES if os.access(path, os.X_OK)), None
    )
    ssh = shutil.which("ssh")
    ssh_keygen = shutil.which("ssh-keygen")
    if sshd is None or ssh is None or ssh_keygen is None:
        return None
    # sshd re-executes itself for every connection and insists on an absolute path.
    return OpenSsh(sshd=os.path.abspath(sshd), ssh=ssh, ssh_keygen=ssh_keygen)


def require_openssh() -> OpenSsh:
    """The OpenSSH binaries, or a skip whose reason the test summary prints (``-ra``)."""
    found = find_openssh()
    if found is None:
        reason = (
            "OpenSSH (sshd, ssh, ssh-keygen) is not installed, so the tests against a real "
            "sshd cannot run here; .ci/run installs openssh-server when it runs as root"
        )
        print(f"\nSKIPPED: {reason}", file=sys.stderr)
        pytest.skip(reason)
    return found


def remote_worker_command() -> str:
    """The absolute path of this venv's ``mcpi-worker``.

    sshd starts the remote command with a minimal environment (a default PATH, no
    activated venv), so a bare ``mcpi-worker`` would not be found; an absolute path
    is what users pass with ``--remote-cmd`` too.
    """
    # Not resolved: the venv's python may be a symlink to the base interpreter, and the
    # script lives beside the venv's python, not the base one.
    return str(Path(sys.executable).parent / "mcpi-worker")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SshDaemon:
    """One sshd, startable and stoppable (to simulate a host going down)."""

    def __init__(self, workdir: Path, openssh: OpenSsh | None = None) -> None:
        self.openssh = openssh or require_openssh()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        # The account sshd runs as is the only one it can log in (the euid, not $USER).
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.port = free_port()
        self.host_key = self.dir / "host_key"
        self.client_key = self.dir / "client_key"
        self.authorized_keys = self.dir / "authorized_keys"
        self.known_hosts = self.dir / "known_hosts"
        self.config = self.dir / "sshd_config"
        self.log = self.dir / "sshd.log"
        self.pid_file = self.dir / "sshd.pid"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0  # where this start's log lines begin (restarts append)
        self._make_keys()

    # -- what a test passes to mcpi -------------------------------------------------

    def host_spec(self, workers: int = 1) -> str:
        return f"{self.user}@127.0.0.1:{self.port}*{workers}"

    def ssh_options(self) -> list[str]:
        """``KEY=VALUE`` pairs for ``--ssh-option``: our key, and strict host-key checks
        against a known_hosts file that holds exactly this daemon's key."""
        return [
            f"IdentityFile={self.client_key}",
            "IdentitiesOnly=yes",
            f"UserKnownHostsFile={self.known_hosts}",
            "StrictHostKeyChecking=yes",
            "LogLevel=ERROR",
        ]

    def cli_args(self, workers: int = 1) -> list[str]:
        args = ["--host", self.host_spec(workers)]
        for option in self.ssh_options():
            args += ["--ssh-option", option]
        return args + ["--remote-cmd", remote_worker_command()]

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        """Start sshd on ``self.port`` and wait (bounded) until it listens."""
        if self._process is not None:
            raise RuntimeError("sshd is already running")
        if os.geteuid() == 0:
            _PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        self._write_config()
        self._log_offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self._process = subprocess.Popen(
                [self.openssh.sshd, "-D", "-e", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # never gets the terminal's Ctrl-C
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._accepts_connections():
            if self._process.poll() is not None:
                self._process = None
                raise RuntimeError(f"sshd exited at start-up; its log:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"sshd did not listen within {START_TIMEOUT_S} s; its log:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the listener **and every session it forked**, as when a host goes down.

        Stopping only the listener would leave established sessions (and their remote
        workers) running, which is what a real ``systemctl stop ssh`` does, but not a
        dead machine.
        """
        if self._process is None:
            return
        process, self._process = self._process, None
        try:
            sessions = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            sessions = []
        process.kill()
        for session in sessions:
            try:
                session.kill()
            except psutil.NoSuchProcess:
                pass
        process.wait(timeout=10)
        psutil.wait_procs(sessions, timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- helpers ----------------------------------------------------------------------

    def _run(self, *argv: str) -> None:
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, capture_output=True)

    def _make_keys(self) -> None:
        self._run(self.openssh.ssh_keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key))
        self._run(self.openssh.ssh_keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(self.client_key))
        self.authorized_keys.write_text((self.dir / "client_key.pub").read_text())
        host_public = (self.dir / "host_key.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_public[0]} {host_public[1]}\n")

    def _config_lines(self) -> list[str]:
        return [
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            f"PidFile {self.pid_file}",
            # The tmp dir is not owned the way StrictModes wants; PAM would need a
            # system-wide setup that a throwaway daemon must not depend on.
            "StrictModes no",
            "UsePAM no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",  # CI runs as root; keys only
            "AllowTcpForwarding no",
            "X11Forwarding no",
            "PrintMotd no",
            "LogLevel VERBOSE",
        ]

    def _write_config(self) -> None:
        lines = self._config_lines()
        # OpenSSH >= 9.8 penalises sources whose sessions end badly; this test daemon
        # kills sessions on purpose, so switch it off where the option exists.
        check = self._write_and_test(lines + ["PerSourcePenalties no"])
        if check.returncode != 0 and "PerSourcePenalties" in check.stderr:
            check = self._write_and_test(lines)  # an older sshd: no such option
        if check.returncode != 0:
            raise RuntimeError(f"sshd rejects its test configuration: {check.stderr.strip()}")

    def _write_and_test(self, lines: list[str]) -> subprocess.CompletedProcess[str]:
        """Write ``lines`` as the config and let ``sshd -t`` judge it."""
        self.config.write_text("\n".join(lines) + "\n")
        return subprocess.run(
            [self.openssh.sshd, "-t", "-f", str(self.config)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )

    def _accepts_connections(self) -> bool:
        # The "listening" line is written after bind+listen, so a connect then succeeds;
        # reading the log avoids leaving half-open probe connections in sshd's log.
        try:
            with open(self.log, "rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return False
        return f"listening on 127.0.0.1 port {self.port}" in text
