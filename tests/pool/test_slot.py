"""``pool.slot``: one slot's workers, without a pool: a ``FakeOwner`` (typed as
``slot.SlotOwner``) records what the slot tells its owner, and the workers are the
in-process fakes (``mcpi_coordinator.testing``), or a launcher that cannot start any."""

from __future__ import annotations

from typing import Any

import trio
from fake_connection import record

from mcpi_coordinator.launch.transport import Launcher, WorkerProcess
from mcpi_coordinator.pool.dispatch import Dispatcher
from mcpi_coordinator.pool.slot import Slot, SlotSettings
from mcpi_coordinator.pool.stats import FailedWorker, SlotState
from mcpi_coordinator.pool.worker_pool import default_task_timeout
from mcpi_coordinator.testing import FakeBehaviour
from mcpi_coordinator.testing.inprocess import fake_launcher


class FakeOwner:
    """A ``SlotOwner`` that decides nothing: it records what its slot tells it."""

    def __init__(self) -> None:
        self.closing = False
        self.told: list[str] = []
        self.failures: list[FailedWorker] = []
        self.retired: list[tuple[dict[str, Any], int]] = []
        self.ready = trio.Event()

    def _closing(self) -> bool:
        return self.closing

    def _begin_close(self) -> None:
        self.told.append("begin_close")

    def _settled(self, slot: Slot, *, ready: bool) -> None:
        self.told.append(f"settled ready={ready}")

    def _worker_ready(self, slot: Slot) -> None:
        self.told.append("worker_ready")
        self.ready.set()

    def _worker_failed(self, failure: FailedWorker) -> None:
        self.told.append("worker_failed")
        self.failures.append(failure)

    def _slot_retired(self, slot: Slot, fields: dict[str, Any], attempts: int) -> None:
        self.told.append("slot_retired")
        self.retired.append((fields, attempts))

    def _slot_changed(self, slot: Slot) -> None:
        pass


def slot_of(owner: FakeOwner, launcher: Launcher, *, host: str | None = None) -> Slot:
    settings = SlotSettings(
        launcher=launcher,
        client="test",
        task_budget=default_task_timeout,
        pipeline_depth=2,
        startup_timeout=10.0,
        max_start_attempts=3,
        shutdown_grace=1.0,
        backoff_s=0.2,
    )
    return Slot(0, owner, Dispatcher(record, slots=1), settings, trio.CapacityLimiter(1), host)


async def cannot_start(index: int) -> WorkerProcess:
    raise FileNotFoundError(2, "No such file or directory", "mcpi-worker")


async def test_a_slot_whose_workers_cannot_start_retires_and_says_so_once(autojump_clock: object) -> None:
    owner = FakeOwner()
    slot = slot_of(owner, cannot_start, host="far")
    with trio.fail_after(60):
        await slot.run()
    assert slot.state is SlotState.RETIRED and (slot.restarts, slot.failed) == (2, 3)
    assert owner.told == ["worker_failed"] * 3 + ["slot_retired", "settled ready=False"]
    assert [f.welcomed for f in owner.failures] == [False] * 3 and {f.host for f in owner.failures} == {"far"}
    ((fields, attempts),) = owner.retired
    assert attempts == 3 and fields["slot"] == 0 and fields["host"] == "far"
    assert "No such file or directory" in fields["reason"]


async def test_a_slot_serves_until_its_owner_closes_then_stops_its_worker(autojump_clock: object) -> None:
    owner = FakeOwner()
    async with trio.open_nursery() as nursery:
        launcher = fake_launcher(nursery, FakeBehaviour())
        slot = slot_of(owner, launcher)
        with trio.fail_after(60):
            async with trio.open_nursery() as supervising:
                supervising.start_soon(slot.run)
                await owner.ready.wait()
                assert slot.state is SlotState.READY and slot.connection is not None
                owner.closing = True
                slot.stop()
        assert slot.stats().state is SlotState.STOPPED and slot.pid is None
        assert owner.told == ["settled ready=True", "worker_ready"] and owner.failures == []
        assert launcher.alive() == [] and launcher.launched[0].returncode == 0  # an orderly shutdown
        nursery.cancel_scope.cancel()
