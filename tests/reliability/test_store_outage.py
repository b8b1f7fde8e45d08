"""The engine rides out a database outage: PostgreSQL restarted, the SQLite disk full.

Engine level (a ``World`` in this process), fast (``make test``):

* plans suspended when the database goes away receive events during the outage; the writes
  wait for the database instead of failing, and once it is back every plan ends ``success``
  with what the events carried (before: the steps failed "in the engine" and the plans were
  stuck for good);
* meanwhile the store reports the failure (``World.store_failure``), and a request's write
  (inside ``impatient()``, as the HTTP layer does) fails at once with
  :class:`~dynflow.persistence.health.StoreUnavailable` instead of waiting (its caller answers
  503);
* the writer's connection, cut by the restart, is replaced: writes after the outage work.

The service-level runs (the real proxy, 503s, ``/v2/features``) are in test_store_faults.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from dynflow import Action, World
from dynflow.persistence.health import StoreUnavailable, impatient

from . import faults, harness

PLANS = 20


class OutageWaiter(Action):
    """Suspends; the event it gets is its output."""

    async def run(self, event: Any = None) -> None:
        if event is None:
            self.suspend()
        self.output["event"] = event


async def _suspended_step(world: World, plan_id: str) -> int:
    async def ready() -> int | None:
        plan = await world.load_plan(plan_id)
        return next((s.id for s in plan.steps.values() if s.state == "suspended"), None)

    step = await harness.wait_until(ready, 20, interval=0.05)
    assert step is not None, f"plan {plan_id} never suspended"
    return step


@contextlib.asynccontextmanager
async def _world(url: str) -> AsyncIterator[World]:
    world = World(url, auto_execute=False, cleaner_interval=None, termination_timeout=5)
    await world.start()
    try:
        yield world
    finally:
        await world.stop()


async def _ride_out(world: World, break_it: Callable[[], Any], mend_it: Callable[[], Any]):
    triggered = [await world.trigger(OutageWaiter) for _ in range(PLANS)]
    steps = [await _suspended_step(world, t.id) for t in triggered]
    break_it()
    events = [
        asyncio.create_task(world.event(t.id, step, {"n": n}))
        for n, (t, step) in enumerate(zip(triggered, steps, strict=True))
    ]

    async def failing() -> bool:
        return world.store_failure() is not None

    noticed = await harness.wait_until(failing, 20, interval=0.05)
    began = time.monotonic()
    refusal: BaseException | None = None
    try:
        async with asyncio.timeout(10):  # not wait_for: a task of its own is patient
            with impatient():
                await world.trigger(OutageWaiter)
    except Exception as exc:  # reported below
        refusal = exc
    fast_fail_s = time.monotonic() - began
    waiting = sum(1 for e in events if not e.done())
    mend_it()
    done, _ = await asyncio.wait(events, timeout=60)
    errors = [e.exception() for e in done if e.exception() is not None]
    results = []
    for n, t in enumerate(triggered):
        plan = await world.load_plan(t.id)
        action = next(a for a in plan.actions.values() if isinstance(a, OutageWaiter))
        results.append((plan.state, plan.result, action.output.get("event") == {"n": n}))
    after = await world.trigger(OutageWaiter)  # the writer works again
    return {
        "failure_noticed": bool(noticed),
        "impatient_fail_s": round(fast_fail_s, 3),
        "impatient_refusal": type(refusal).__name__,
        "events_waiting_during_outage": waiting,
        "events_done": len(done),
        "event_errors": [repr(e) for e in errors[:3]],
        "plans_success": sum(1 for r in results if r == ("stopped", "success", True)),
        "store_failure_after": world.store_failure(),
        "write_after": after.planned,
    }


def _check(figures: dict[str, Any], name: str) -> None:
    for key, value in figures.items():
        if isinstance(value, int | float | bool):
            harness.emit(key, value, unit="observation", scenario=f"engine-outage-{name}")
    assert figures == {
        **figures,
        "failure_noticed": True,
        "impatient_refusal": StoreUnavailable.__name__,
        "events_waiting_during_outage": PLANS,
        "events_done": PLANS,
        "event_errors": [],
        "plans_success": PLANS,
        "store_failure_after": None,
        "write_after": True,
    }, figures
    assert figures["impatient_fail_s"] < 1.0, figures


async def test_engine_rides_out_a_postgresql_restart(tmp_path: Path) -> None:
    with faults.pg_cluster() as pg:
        async with harness.database("postgresql", tmp_path, port=pg.port) as setting:
            async with _world(harness.sqlalchemy_url(setting)) as world:
                figures = await _ride_out(world, lambda: pg.stop("fast"), pg.start)
    _check(figures, "postgresql")


async def test_engine_rides_out_a_full_sqlite_disk(tmp_path: Path) -> None:
    with faults.small_tmpfs("8m") as disk:
        url = harness.sqlalchemy_url(str(disk / "dynflow.sqlite"))
        fillers: list[Path] = []
        async with _world(url) as world:
            figures = await _ride_out(
                world,
                lambda: fillers.append(faults.fill_disk(disk)),
                lambda: fillers.pop().unlink(),
            )
    _check(figures, "sqlite-disk-full")
