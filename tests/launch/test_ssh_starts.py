"""At most ``MAX_SSH_STARTS`` ssh clients start at once over all hosts, beside each
host's own bound (issue 23, finding 7): 300 hosts are not 300 ssh processes within a
second. On the mock clock, with fakes standing in for the ssh clients."""

from __future__ import annotations

import pytest
import trio
from test_fleet import StartWatch  # every start takes 2 (fake) seconds; counts the peak

from mcpi_coordinator.launch import remote
from mcpi_coordinator.pool.worker_pool import WorkerPool

HOSTS = 300
START_S = 2.0
"""How long StartWatch takes to start a worker."""


def host_slots(count: int) -> list[remote.WorkerSlot]:
    return [
        remote.WorkerSlot(("ssh",), remote.parse_host_spec(f"node{i}")) for i in range(count)
    ]


async def test_three_hundred_hosts_start_a_bounded_number_at_once(autojump_clock: object) -> None:
    slots = [remote.WorkerSlot(("mcpi-worker",))] * 2 + host_slots(HOSTS)
    limits = remote.starting_limits(slots, local=2)
    assert remote.concurrent_starts(limits) == 2 + remote.MAX_SSH_STARTS
    with trio.fail_after(10 * HOSTS):
        async with trio.open_nursery() as nursery:
            watch = StartWatch(nursery)
            started = trio.current_time()
            async with WorkerPool(len(slots), launcher=watch, starting_limits=limits) as pool:
                assert [w.state for w in pool.stats.workers] == ["ready"] * len(slots)
                # Rounds of MAX_SSH_STARTS hosts, START_S each; the local two beside them.
                rounds = -(-HOSTS // remote.MAX_SSH_STARTS)
                assert trio.current_time() - started == pytest.approx(rounds * START_S, abs=0.5)
            assert watch.peak == 2 + remote.MAX_SSH_STARTS
            nursery.cancel_scope.cancel()


async def test_a_slot_cancelled_while_waiting_for_the_shared_turn_holds_nothing(autojump_clock: object) -> None:
    (limit,) = remote.starting_limits(host_slots(1), ssh_total=1)
    assert isinstance(limit, remote.HostStarts)
    other = object()
    await limit.every_host.acquire_on_behalf_of(other)  # every shared turn taken
    waiting = object()
    with trio.move_on_after(1.0) as gave_up:
        await limit.acquire_on_behalf_of(waiting)
    assert gave_up.cancelled_caught
    assert limit.host.borrowed_tokens == 0 and limit.every_host.borrowed_tokens == 1
    limit.every_host.release_on_behalf_of(other)
    await limit.acquire_on_behalf_of(waiting)
    assert (limit.host.borrowed_tokens, limit.every_host.borrowed_tokens) == (1, 1)
    limit.release_on_behalf_of(waiting)
    assert (limit.host.borrowed_tokens, limit.every_host.borrowed_tokens) == (0, 0)
