"""Conformance: Dynflow's ``test/execution_plan_cleaner_test.rb``
("Dynflow::Actors::ExecutionPlanCleaner").

The cleaner deletes stopped plans whose ``ended_at`` is older than ``max_age``, every poll
interval. Ours: ``World(cleaner_interval=..., stopped_max_age=...)``, one pass is
``world.cleaner.clean()``. Dynflow's test moves ``ended_at`` into the past through the
persistence; so do we (an UPDATE of the plans' rows). Dynflow's managed clock (``pending_pings``,
``clock.progress``) and its mocha expectations on the persistence have no counterpart: the
periodic test observes the deletions themselves instead.

Ours also deletes paused plans older than ``paused_max_age`` (7 days); Dynflow never does.
No test of Dynflow's file is about that.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from dynflow import World, WorldConfig
from dynflow.persistence.schema import execution_plans
from tests.dynflow.conformance.support_recovery import Simple, stop_all, world
from tests.support.waiting import wait_for

AGE = 10  # Dynflow's ``let(:age) { 10 }``: max_age in seconds


async def age_plans(w: World, plan_ids: list[str], seconds: float) -> None:
    """Dynflow's ``plan.instance_variable_set(:@ended_at, plan.ended_at - 15); plan.save``."""
    async with w.store.engine.begin() as conn:
        for plan_id in plan_ids:
            plan = await w.load_plan(plan_id)
            assert plan is not None and plan.ended_at is not None
            await conn.execute(
                update(execution_plans)
                .where(execution_plans.c.uuid == plan_id)
                .values(ended_at=plan.ended_at - timedelta(seconds=seconds))
            )


async def trigger_and_finish(w: World, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        done = await (await w.trigger(Simple)).wait(10)
        assert (done.state, done.result) == ("stopped", "success")
        ids.append(done.id)
    return ids


async def remaining(w: World, plan_ids: list[str]) -> list[str]:
    return [p.id for p in await w.find_plans(filters={"uuid": plan_ids})]


async def test_is_disabled_by_default(db_url):
    """execution_plan_cleaner_test.rb: "Dynflow::Actors::ExecutionPlanCleaner" / "is disabled
    by default".

    INTENDED DIFFERENCE (docs/dynflow-differences.md): our cleaner is on by default (every
    300 s; stopped plans older than 30 min, paused ones older than 7 days), because a proxy
    that never cleans grows without bound; ``cleaner_interval=None`` turns it off, as
    Dynflow's default is."""
    assert WorldConfig(db_url=db_url).cleaner_interval == 300.0
    assert WorldConfig(db_url=db_url, cleaner_interval=None).cleaner_interval is None
    assert WorldConfig(db_url=db_url, cleaner_interval=60.0).cleaner_interval == 60.0


async def test_periodically_looks_for_old_execution_plans(db_url):
    """execution_plan_cleaner_test.rb: "Dynflow::Actors::ExecutionPlanCleaner" / "periodically
    looks for old execution plans".

    Every interval the cleaner looks again: a plan that becomes old enough after the world
    started is deleted by a later pass, without anyone asking."""
    w = world(db_url, cleaner_interval=0.05, stopped_max_age=AGE)
    await w.start()
    try:
        for _ in range(2):  # two plans aged one after the other: two later passes
            (plan_id,) = await trigger_and_finish(w, 1)
            assert await remaining(w, [plan_id]) == [plan_id]
            await age_plans(w, [plan_id], 15)

            async def deleted(plan_id: str = plan_id) -> bool:
                return await w.load_plan(plan_id) is None

            await wait_for(deleted)
    finally:
        await stop_all(w)


async def test_cleans_up_old_plans(db_url):
    """execution_plan_cleaner_test.rb: "Dynflow::Actors::ExecutionPlanCleaner" / "cleans up old
    plans"."""
    w = world(db_url, stopped_max_age=AGE)
    await w.start()
    try:
        plan_ids = await trigger_and_finish(w, 10)
        await age_plans(w, plan_ids, 15)
        assert await w.cleaner.clean() == 10
        assert await remaining(w, plan_ids) == []
        for plan_id in plan_ids:
            assert await w.store.load_actions(plan_id) == []
    finally:
        await stop_all(w)


async def test_leaves_new_enough_plans_intact(db_url):
    """execution_plan_cleaner_test.rb: "Dynflow::Actors::ExecutionPlanCleaner" / "leaves "new
    enough" plans intact"."""
    w = world(db_url, stopped_max_age=AGE)
    await w.start()
    try:
        plan_ids = await trigger_and_finish(w, 10)
        assert await w.cleaner.clean() == 0
        assert sorted(await remaining(w, plan_ids)) == sorted(plan_ids)
    finally:
        await stop_all(w)
