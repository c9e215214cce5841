"""A secret written into ``--worker-cmd`` is not repeated in mcpi's messages (issue 23,
finding 7): values named as secrets are shown as REDACTED, the rest of the command as
it was given, so the user still recognises the worker."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest
from command_line import mcpi

from mcpi_coordinator.launch.redact import redacted, shown_command

SECRETS = ("hunter2", "s3cr3t", "pa55", "k3y", "t0kv")


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["w", "--token", "hunter2", "--jobs", "2"], "w --token REDACTED --jobs 2"),
        (["w", "--api-key=hunter2"], "w --api-key=REDACTED"),
        (["w", "-password", "hunter2"], "w -password REDACTED"),
        (["env", "PGPASSWORD=hunter2", "AWS_SECRET_ACCESS_KEY=s3cr3t", "w"],
         "env PGPASSWORD=REDACTED AWS_SECRET_ACCESS_KEY=REDACTED w"),
        (["w", "--url", "https://bob:hunter2@db.example/x"], "w --url https://bob:REDACTED@db.example/x"),
        (["ssh", "-T", "-o", "BatchMode=yes", "node1", "--", "mcpi-worker --auth-token 'a b' --jobs 4"],
         "ssh -T -o BatchMode=yes node1 -- 'mcpi-worker --auth-token REDACTED --jobs 4'"),
        # Nothing named a secret: shown as given.
        (["python3", "-c", "import sys; sys.exit(7)"], "python3 -c 'import sys; sys.exit(7)'"),
        (["w", "--log-level", "debug", "--keep=1", "node-3"], "w --log-level debug --keep=1 node-3"),
    ],
)  # fmt: skip
def test_secret_values_are_left_out(argv: list[str], shown: str) -> None:
    assert shown_command(argv) == shown


def test_a_whole_line_is_redacted_inside_quotes_too() -> None:
    assert redacted("w --password='a b' --secret \"x y\" TOKEN=t0kv") == (
        "w --password=REDACTED --secret REDACTED TOKEN=REDACTED"
    )


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return mcpi("estimate", "--points", "1e5", *args)


@pytest.mark.slow
def test_a_failing_worker_is_named_without_its_secrets() -> None:
    worker = shlex.join([sys.executable, "-c", "import sys; sys.exit(7)", "--token", "hunter2",
                         "--db-password=s3cr3t", "API_KEY=k3y", "https://me:pa55@h/"])  # fmt: skip
    done = run("--workers", "1", "--worker-cmd", worker)
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.splitlines()
    assert "exit code 7" in line and "--token REDACTED --db-password=REDACTED" in line, line
    assert not any(secret in done.stderr for secret in SECRETS), done.stderr


def test_a_worker_command_that_cannot_be_split_is_refused_without_its_secrets() -> None:
    done = run("--worker-cmd", "w --password=hunter2 'unclosed")
    assert done.returncode == 2
    assert "--password=REDACTED" in done.stderr and "hunter2" not in done.stderr, done.stderr
