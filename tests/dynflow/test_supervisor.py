"""The supervisor of a world's loops: a loop that dies is logged and started again; stop()
leaves no task behind."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dynflow import supervisor as supervisor_module
from dynflow.supervisor import Supervisor
from tests.support.waiting import wait_for


@pytest.fixture(autouse=True)
def quick_restarts(monkeypatch):
    monkeypatch.setattr(supervisor_module, "RESTART_FIRST", 0.01)


async def test_a_loop_that_dies_is_logged_and_started_again(caplog):
    caplog.set_level(logging.ERROR, logger="dynflow.supervisor")
    passes: list[int] = []
    running = asyncio.Event()

    async def flaky() -> None:
        passes.append(1)
        if len(passes) == 1:
            raise RuntimeError("a bug in one pass")
        running.set()
        await asyncio.Event().wait()

    supervisor = Supervisor("w1")
    supervisor.start("flaky", flaky)
    await asyncio.wait_for(running.wait(), 5)
    assert supervisor.restarted == {"flaky": 1} and supervisor.running("flaky")
    [record] = caplog.records
    assert "background loop flaky of world w1 died" in record.getMessage()
    assert record.exc_info is not None and "a bug in one pass" in str(record.exc_info[1])
    await supervisor.stop()
    assert not supervisor.running("flaky")


async def test_stop_cancels_loops_and_pending_restarts():
    before = set(asyncio.all_tasks())
    ended = asyncio.Event()

    async def ends_at_once() -> None:
        ended.set()

    async def forever() -> None:
        await asyncio.Event().wait()

    supervisor = Supervisor()
    supervisor.start("ends", ends_at_once)
    supervisor.start("forever", forever)
    await asyncio.wait_for(ended.wait(), 5)

    async def restarted() -> bool:
        return supervisor.restarted.get("ends", 0) >= 1

    await wait_for(restarted, timeout=5)
    await supervisor.stop()
    await asyncio.sleep(0.05)  # a restart that was pending must not fire after stop()
    current = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
    assert left == []
    with pytest.raises(RuntimeError):
        supervisor.start("late", forever)
