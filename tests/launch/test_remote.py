"""Host specs, hosts files, ssh argument vectors and the slot launcher (no sshd needed).

The tests against a real sshd are in ``test_remote_ssh.py``.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from second_user import as_second_user, second_user, shared_directory
from structlog.testing import capture_logs

from mcpi_coordinator.launch.remote import (
    MAX_WORKERS_PER_HOST,
    SPEC_SYNTAX,
    HostSpec,
    RemoteConfigError,
    WorkerSlot,
    parse_host_spec,
    parse_ssh_option,
    plan_slots,
    read_hosts_file,
    slot_launcher,
    split_command,
    ssh_command,
    substitute_index,
)
from mcpi_coordinator.pool.chunks import Chunk
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_coordinator.testing.inprocess import by_slot, fake_launcher
from mcpi_coordinator.testing.script import FakeBehaviour

# -- host specs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node1", HostSpec("node1")),
        ("node1.example.org", HostSpec("node1.example.org")),
        ("alice@node1", HostSpec("node1", user="alice")),
        ("node1:2222", HostSpec("node1", port=2222)),
        ("node1*4", HostSpec("node1", workers=4)),
        ("bob_2@10.0.0.7:22*8", HostSpec("10.0.0.7", user="bob_2", port=22, workers=8)),
        ("[::1]", HostSpec("::1")),
        ("carol@[fe80::1]:2200*2", HostSpec("fe80::1", user="carol", port=2200, workers=2)),
        ("a-b_c.d", HostSpec("a-b_c.d")),
        (f"h*{MAX_WORKERS_PER_HOST}", HostSpec("h", workers=MAX_WORKERS_PER_HOST)),
        ("h:65535", HostSpec("h", port=65535)),
    ],
)
def test_valid_host_specs(text: str, expected: HostSpec) -> None:
    assert parse_host_spec(text) == expected


def test_spec_names_and_destination() -> None:
    spec = parse_host_spec("alice@node1:2222*3")
    assert spec.destination == "alice@node1"
    assert spec.name == "alice@node1:2222"
    assert str(spec) == "alice@node1:2222*3"
    assert parse_host_spec("[::1]:22").name == "[::1]:22"
    assert str(parse_host_spec("node1")) == "node1"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("node1;touch x", "';' is not allowed"),
        ("node1&&id", "'&' is not allowed"),
        ("node1|id", "'|' is not allowed"),
        ("$(id)", "'$' is not allowed"),
        ("`id`", "'`' is not allowed"),
        ("node1>x", "'>' is not allowed"),
        ("node'1", "\"'\" is not allowed"),
        ('node"1', "'\"' is not allowed"),
        ("node\\1", "is not allowed"),
        ("node 1", "whitespace"),
        ("node1\n", "whitespace"),
        ("node\t1", "whitespace"),
        ("-oProxyCommand=id", "'=' is not allowed"),
        ("-node1", "starts with '-'"),
        ("alice@-node1", "starts with '-'"),
        ("-alice@node1", "user name starts with '-'"),
        ("@node1", "user name is empty"),
        ("alice@", "host name is empty"),
        ("a@b@c", "more than one '@'"),
        (":22", "host name is empty"),
        ("node1:", "port must be a whole number"),
        ("node1:0", "port must be from 1 to 65535"),
        ("node1:65536", "port must be from 1 to 65535"),
        ("node1:-1", "port must be a whole number"),
        ("node1:2a", "port must be a whole number"),
        ("node1:1:2", "more than one ':'"),
        ("node1*", "worker count N must be a whole number"),
        ("node1*0", "worker count N must be from 1"),
        (f"node1*{MAX_WORKERS_PER_HOST + 1}", "worker count N must be from 1"),
        ("node1*2*3", "worker count N must be a whole number"),
        ("node1*x", "worker count N must be a whole number"),
        ("[::1", "without a closing ']'"),
        ("[node1]", "is not an IPv6 address"),
        ("[::1]x", "only ':port' may follow"),
        ("nöde", "'ö' is not allowed"),
        ("*3", "host name is empty"),
    ],
)
def test_invalid_host_specs_give_one_clear_line(text: str, reason: str) -> None:
    with pytest.raises(RemoteConfigError) as caught:
        parse_host_spec(text)
    message = str(caught.value)
    assert reason in message
    assert repr(text) in message
    assert SPEC_SYNTAX in message
    assert "\n" not in message.replace(repr(text), "")


_SAFE_DESTINATION_CHARS = set(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@:"
)


@given(st.text(max_size=40))
def test_any_text_is_rejected_or_yields_an_inert_destination(text: str) -> None:
    try:
        spec = parse_host_spec(text)
    except RemoteConfigError:
        return
    assert set(spec.destination) <= _SAFE_DESTINATION_CHARS
    assert not spec.destination.startswith("-")
    assert 1 <= spec.workers <= MAX_WORKERS_PER_HOST
    argv = ssh_command(spec, ["mcpi-worker"])
    # The destination is one word, right before the "--" that ends ssh's options.
    assert argv[-3:] == [spec.destination, "--", "mcpi-worker"]


# -- hosts files -----------------------------------------------------------------------


def test_hosts_file_with_comments_and_blank_lines(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(
        "# the rack in room 3\n"
        "\n"
        "alice@node1*4\n"
        "   node2:2222   # slow disk\n"
        "\t\n"
        "[::1]*2\n"
    )
    assert read_hosts_file(hosts) == [
        HostSpec("node1", user="alice", workers=4),
        HostSpec("node2", port=2222),
        HostSpec("::1", workers=2),
    ]


def test_empty_hosts_file_has_no_hosts(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("# nothing yet\n\n")
    assert read_hosts_file(hosts) == []


def test_hosts_file_error_names_file_and_line(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("node1\n# fine\nnode2;reboot\n")
    with pytest.raises(RemoteConfigError) as caught:
        read_hosts_file(hosts)
    assert str(caught.value).startswith(f"{hosts}:3: invalid host spec 'node2;reboot'")


def test_hosts_file_two_specs_on_a_line_is_an_error(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("node1 node2\n")
    with pytest.raises(RemoteConfigError, match=r":1: .*whitespace"):
        read_hosts_file(hosts)


def test_missing_or_binary_hosts_file(tmp_path: Path) -> None:
    with pytest.raises(RemoteConfigError, match=r"cannot read hosts file .*No such file"):
        read_hosts_file(tmp_path / "absent")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00node")
    with pytest.raises(RemoteConfigError, match="not UTF-8"):
        read_hosts_file(binary)


def test_a_hosts_file_others_may_write_is_refused(tmp_path: Path) -> None:
    """Whoever can write the hosts file chooses the machines that give the counts (as
    with a checkpoint, which is refused on the same ground): ssh's rule for its config."""
    hosts = tmp_path / "hosts"
    hosts.write_text("node1*4\n")
    hosts.chmod(0o666)
    with pytest.raises(RemoteConfigError) as caught:
        read_hosts_file(hosts)
    assert str(caught.value) == (
        f"hosts file {str(hosts)!r} may be written by others (mode 0666): whoever can write it chooses "
        "the machines that give the counts; use a file only you can write"
    )
    hosts.chmod(0o644)
    assert read_hosts_file(hosts) == [HostSpec("node1", workers=4)]


def test_a_hosts_file_of_a_real_second_user_is_refused() -> None:
    other = second_user()
    with shared_directory() as shared:
        hosts = shared / "hosts"
        as_second_user(["sh", "-c", f"echo 'mallory@their-host*64' > {shlex.quote(str(hosts))}"])
        assert hosts.stat().st_uid == other.pw_uid and hosts.stat().st_mode & 0o022 == 0
        theirs = rf"is another user's \(uid {other.pw_uid}\): whoever can write"
        with pytest.raises(RemoteConfigError, match=theirs):
            read_hosts_file(hosts)


# -- ssh options and commands ----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["IdentityFile=/tmp/key", "StrictHostKeyChecking=no", "ProxyCommand=ssh -W %h:%p bastion"],
)
def test_valid_ssh_options(text: str) -> None:
    assert parse_ssh_option(text) == text


@pytest.mark.parametrize(
    "text", ["IdentityFile", "=x", "Key=", "Key= ", "-F=x", "Bad Key=x", "Key=a\nProxyCommand=id"]
)
def test_invalid_ssh_options(text: str) -> None:
    with pytest.raises(RemoteConfigError, match="invalid ssh option"):
        parse_ssh_option(text)


def test_ssh_command_argv() -> None:
    spec = parse_host_spec("alice@node1:2222*3")
    argv = ssh_command(
        spec,
        ["/opt/mcpi/bin/mcpi-worker", "--log-level", "debug"],
        ["IdentityFile=/k", "ConnectTimeout=3"],
    )
    assert argv == [
        "ssh", "-T",
        "-o", "BatchMode=yes",
        "-p", "2222",
        "-o", "IdentityFile=/k",
        "-o", "ConnectTimeout=3",
        "-o", "ConnectTimeout=10",
        "-o", "ServerAliveInterval=5",
        "-o", "ServerAliveCountMax=3",
        "alice@node1", "--", "/opt/mcpi/bin/mcpi-worker --log-level debug",
    ]  # fmt: skip
    # ssh keeps the first value of an option: BatchMode cannot be switched off, and the
    # user's ConnectTimeout wins over our default.
    assert argv.index("BatchMode=yes") < argv.index("IdentityFile=/k")
    assert argv.index("ConnectTimeout=3") < argv.index("ConnectTimeout=10")


def test_ssh_command_without_user_or_port() -> None:
    argv = ssh_command(HostSpec("node1"), ["mcpi-worker"], ssh="/usr/bin/ssh")
    assert argv[0] == "/usr/bin/ssh"
    assert "-p" not in argv
    assert argv[-3:] == ["node1", "--", "mcpi-worker"]


_HOSTILE_WORDS = st.lists(
    st.text(
        alphabet=st.sampled_from(list("ab $`;&|()<>'\"\\*?~#{}!=\t%")),
        min_size=1,
        max_size=12,
    ),
    min_size=1,
    max_size=5,
)


@given(_HOSTILE_WORDS)
def test_remote_command_reaches_the_remote_shell_word_for_word(words: list[str]) -> None:
    # ssh hands the remote login shell one string; it must split back into the words.
    remote = ssh_command(HostSpec("node1"), words)[-1]
    assert shlex.split(remote) == words


def test_remote_command_metacharacters_are_inert_in_a_real_shell(tmp_path: Path) -> None:
    """What the remote login shell does with ssh's command string: runs one program with
    these exact words, and executes none of the injected commands."""
    marker = tmp_path / "injected"
    words = [
        sys.executable,
        "-c",
        "import json, sys; print(json.dumps(sys.argv[1:]))",
        f"; touch {marker}",
        f"$(touch {marker})",
        f"`touch {marker}`",
        f"' ; touch {marker} ; '",
        "$HOME",
    ]
    remote = ssh_command(HostSpec("node1"), words)[-1]
    result = subprocess.run(
        ["/bin/sh", "-c", remote], capture_output=True, text=True, check=True, timeout=30
    )
    assert json.loads(result.stdout) == words[3:]
    assert not marker.exists()


def test_split_command_errors() -> None:
    assert split_command("kubectl exec -i 'mcpi {i}' -- mcpi-worker", "--worker-cmd") == [
        "kubectl", "exec", "-i", "mcpi {i}", "--", "mcpi-worker",
    ]  # fmt: skip
    with pytest.raises(RemoteConfigError, match="invalid --remote-cmd 'a \"b': No closing"):
        split_command('a "b', "--remote-cmd")
    with pytest.raises(RemoteConfigError, match="--worker-cmd: it is empty"):
        split_command("   ", "--worker-cmd")


# -- {i} and slots ---------------------------------------------------------------------


def test_substitute_index_replaces_every_occurrence_and_nothing_else() -> None:
    template = ["kubectl", "exec", "-i", "mcpi-{i}", "--", "sh", "-c", "echo ${HOME} {i}{i} {}"]
    assert substitute_index(template, 7) == [
        "kubectl", "exec", "-i", "mcpi-7", "--", "sh", "-c", "echo ${HOME} 77 {}",
    ]  # fmt: skip
    assert substitute_index(["mcpi-worker"], 3) == ["mcpi-worker"]


def test_plan_puts_local_workers_first_then_one_slot_per_host() -> None:
    hosts = [parse_host_spec("a*2"), parse_host_spec("bob@b:2200")]
    template = ["srun", "-N1", "--job-name=w{i}", "mcpi-worker"]
    slots = plan_slots(2, lambda index: substitute_index(template, index), hosts, ["X=1"])
    assert [slot.host for slot in slots] == [None, None, hosts[0], hosts[1]]
    assert [slot.jobs for slot in slots] == [1, 1, 2, 1]
    assert slots[0].command == ("srun", "-N1", "--job-name=w0", "mcpi-worker")
    assert slots[1].command == ("srun", "-N1", "--job-name=w1", "mcpi-worker")
    # a*2 is one connection whose worker computes two samples at once.
    assert slots[2].command == tuple(ssh_command(hosts[0], ["mcpi-worker", "--jobs", "2"], ["X=1"]))
    assert slots[2].command[-1] == "mcpi-worker --jobs 2"
    assert slots[3].command[-3:] == ("bob@b", "--", "mcpi-worker")  # nothing added for one
    assert "2200" in slots[3].command


def test_plan_remote_only_and_custom_remote_command() -> None:
    slots = plan_slots(
        0, lambda _: ["unused"], [parse_host_spec("h*64")], remote_command=["/opt/venv/bin/mcpi-worker"]
    )
    [slot] = slots
    assert slot.command[-1] == "/opt/venv/bin/mcpi-worker --jobs 64"
    assert slot.jobs == 64


def test_specs_of_one_destination_are_one_connection_of_their_sum() -> None:
    hosts = [parse_host_spec(s) for s in ("a*2", "b", "a*3", "alice@a", "a:2222*2", "b*4")]
    slots = plan_slots(0, lambda _: ["unused"], hosts)
    assert [(str(slot.host), slot.jobs) for slot in slots] == [
        ("a*5", 5), ("b*5", 5), ("alice@a", 1), ("a:2222*2", 2),
    ]  # fmt: skip
    assert slots[0].command[-1] == "mcpi-worker --jobs 5"
    with pytest.raises(RemoteConfigError, match="host a is given 1025 workers in all; one worker there"):
        plan_slots(0, lambda _: ["unused"], [parse_host_spec("a*1024"), parse_host_spec("a")])


class _RecordingSpawn:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    async def __call__(self, argv: Sequence[str]) -> object:
        self.calls.append(tuple(argv))
        return object()


async def test_slot_launcher_starts_each_slots_command_and_replacements_go_to_the_same_host() -> None:
    slots = [WorkerSlot(("local-worker",)), WorkerSlot(("ssh", "a")), WorkerSlot(("ssh", "b"))]
    spawn = _RecordingSpawn()
    launch = slot_launcher(slots, spawn)  # type: ignore[arg-type]
    for index in (0, 1, 2, 1, 1):
        await launch(index)
    assert spawn.calls == [
        ("local-worker",), ("ssh", "a"), ("ssh", "b"), ("ssh", "a"), ("ssh", "a"),
    ]  # fmt: skip


# -- an unreachable host is one warning, not one per worker ----------------------------


async def test_pool_warns_once_per_host_when_its_workers_are_retired(autojump_clock: object) -> None:
    unreachable = FakeBehaviour(exit_at_start=True, exit_code=255)  # what ssh does
    slot_hosts = [None, "alice@node1", "alice@node1", "alice@node1", "node2"]
    with capture_logs() as logs, trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(
                nursery, by_slot(dict.fromkeys(range(1, 5), unreachable), launches=None)
            )
            async with WorkerPool(5, launcher=launcher, slot_hosts=slot_hosts) as pool:
                result = await pool.sample(Chunk(seed=1, stream=0, points=1000))
                assert result.slot == 0
            stats = pool.stats
    assert [w.state for w in stats.workers] == ["stopped"] + ["retired"] * 4
    retired = [entry for entry in logs if entry["event"] == "worker_retired"]
    assert sorted((e["log_level"], e["host"]) for e in retired) == [
        ("info", "alice@node1"),
        ("info", "alice@node1"),
        ("warning", "alice@node1"),
        ("warning", "node2"),
    ]


def test_pool_rejects_slot_hosts_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="slot_hosts names 1 slots, not 2"):
        WorkerPool(2, slot_hosts=["a"])
