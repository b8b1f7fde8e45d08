"""Conformance: Dynflow's ``test/abnormal_states_recovery_test.rb`` ("consistency check").

Dynflow invalidates a world that does not answer a ping: it fails the running steps of the
plans the world was executing, applies their rescue strategy and executes them elsewhere,
repairs what the world was planning and removes its locks. Our engine does the same at start
(``auto_recover``) and in ``world.invalidate_dead_worlds()``; a world is dead when its process
is gone (same host) or its heartbeat is old. A ``kill -9`` is simulated in-process with
``World.abandon()``; worlds that must stay alive get a foreign hostname.

Ruby's "client worlds" (no executor) have no counterpart: every world of ours executes, so the
world that invalidates also re-executes. Ruby's lock-log assertions (``CoordiationAdapterWithLog``)
are re-expressed as the effect the locks guard (the plan recovered once, the lock gone). Two
tests force the interleaving of two worlds that a loaded machine produces at random, by making
one world's first read of the plan wait (bounded) until the other world got ahead; the
"prevents from running the auto-execution twice" test has two Python tests, one per
interleaving.

Not ported:

* "for plans assigned to invalid world" / "world invalidation" / "when no executor is
  available, marks the plans as paused": needs a client-only world; every world of ours has
  an executor and runs the plans it recovers (design: no client worlds).
* "#worlds_validity_check" / "the auto_validity_check is enabled" / "allows to filter the
  worlds to run the check on": ``invalidate_dead_worlds()`` takes no filter of worlds; there is
  no per-world check to express it with.
"""

from __future__ import annotations

import asyncio

from dynflow import WorldConfig
from dynflow.cleaner import CLEANER_LOCK
from dynflow.delayed import PLANNING_LOCK, planning_lock_id
from dynflow.delayed_executor import DELAYED_EXECUTOR_ID, DELAYED_EXECUTOR_LOCK
from dynflow.executor import EXECUTION_LOCK
from dynflow.locks import INHIBITION_LOCK, SINGLETON_LOCK, plan_owner
from tests.dynflow.conformance.support_recovery import (
    Counted,
    Failing,
    Gated,
    Quick,
    SkippableBlocking,
    Waiting,
    claim_for_planning,
    history,
    history_names,
    live_world,
    lock_ids,
    long_ago,
    new_uuid,
    put_execution_lock,
    put_lock,
    put_world_record,
    serialize_migrations,
    stop_all,
    world,
    world_ids,
)
from tests.support.waiting import wait_for, wait_plan_state, wait_step_state

RUN_STEP = 2  # plan step 1, run step 2 of a one-action plan
REEXECUTED = ["start execution", "terminate execution", "start execution", "finish execution"]


def assert_plan_reexecuted(plan) -> None:
    """Dynflow's ``assert_plan_reexecuted``."""
    assert (plan.state, plan.result) == ("stopped", "success")
    assert history_names(plan) == REEXECUTED
    assert plan.execution_history[0]["world_id"] != plan.execution_history[-1]["world_id"]


async def executing_then_killed(db_url: str, action=Waiting):
    """Dynflow's ``while_executing_plan``: a world executes a plan whose step is suspended
    (or running, for a blocking action), then dies. Returns (dead world, plan id)."""
    first = world(db_url)
    await first.start()
    triggered = await first.trigger(action)
    state = "suspended" if action is Waiting else "running"
    await wait_step_state(first, triggered.id, RUN_STEP, state)
    await first.abandon()
    return first, triggered.id


# ---- "for plans assigned to invalid world" / "world invalidation" ------------------------------
async def test_invalidation_removes_the_world_from_the_register(db_url):
    """abnormal_states_recovery_test.rb: "consistency check" / "for plans assigned to invalid
    world" / "world invalidation" / "removes the world from the register"."""
    dead, _ = await executing_then_killed(db_url)
    other = live_world(db_url)
    await other.start()
    try:
        assert dead.id in await world_ids(other)
        assert await other.invalidate_dead_worlds() == 1
        assert dead.id not in await world_ids(other)
        assert dead.id not in {w["id"] for w in await other.worlds()}
    finally:
        await stop_all(other)


async def test_invalidation_schedules_the_plans_to_be_run_on_a_different_executor(db_url):
    """abnormal_states_recovery_test.rb: "consistency check" / "for plans assigned to invalid
    world" / "world invalidation" / "schedules the plans to be run on different executor"."""
    dead, plan_id = await executing_then_killed(db_url)
    other = world(db_url, auto_recover=True)
    await other.start()  # invalidates the dead world and takes its plan over
    try:
        assert other.is_running(plan_id)
        await wait_step_state(other, plan_id, RUN_STEP, "suspended")
        await other.event(plan_id, RUN_STEP, {"finish": True})
        plan = await wait_plan_state(other, plan_id)
        assert_plan_reexecuted(plan)
        assert history(plan) == [
            ("start execution", dead.id),
            ("terminate execution", dead.id),
            ("start execution", other.id),
            ("finish execution", other.id),
        ]
        assert await lock_ids(other, EXECUTION_LOCK) == set()
    finally:
        await stop_all(other)


async def test_honors_rescue_strategy_when_invalidating_execution_locks(db_url):
    """abnormal_states_recovery_test.rb: "consistency check" / "for plans assigned to invalid
    world" / "world invalidation" / "honors rescue strategy when invalidating execution locks".

    Dynflow's test worlds run with ``auto_rescue = false``; the invalidation still applies
    the plan's rescue strategy (``prepare_for_rescue``): skip → the failed step is skipped and
    the plan executed to ``stopped``."""
    dead = world(db_url, auto_rescue=False)
    await dead.start()
    triggered = await dead.trigger(SkippableBlocking)
    await wait_step_state(dead, triggered.id, RUN_STEP, "running")
    await dead.abandon()
    other = world(db_url, auto_rescue=False, auto_recover=True)
    await other.start()
    try:

        async def settled():
            plan = await other.load_plan(triggered.id)
            if plan.state == "stopped":
                return plan
            if plan.state == "paused" and not other.is_running(triggered.id):
                return plan  # left paused: nothing more will happen to it
            return None

        plan = await wait_for(settled)
        assert plan.steps[RUN_STEP].state == "skipped"
        assert (plan.state, plan.result) == ("stopped", "warning")
    finally:
        await stop_all(other)


async def test_prevents_from_running_the_invalidation_twice_on_the_same_world(db_url):
    """abnormal_states_recovery_test.rb: "consistency check" / "for plans assigned to invalid
    world" / "world invalidation" / "prevents from running the invalidation twice on the same
    world".

    Dynflow guards the invalidation with a ``world-invalidation:<id>`` lock; we have none, so
    the guarded effect is checked: a second invalidation finds nothing left to do and the
    plan is recovered once."""
    dead, plan_id = await executing_then_killed(db_url)
    first, second = live_world(db_url), live_world(db_url)
    await first.start()
    await second.start()
    try:
        assert await first.invalidate_dead_worlds() == 1
        assert await second.invalidate_dead_worlds() == 0
        assert first.is_running(plan_id) and not second.is_running(plan_id)
        plan = await first.load_plan(plan_id)
        assert history_names(plan) == REEXECUTED[:3]
        await wait_step_state(first, plan_id, RUN_STEP, "suspended")
        await first.event(plan_id, RUN_STEP, {"finish": True})
        assert_plan_reexecuted(await wait_plan_state(first, plan_id))
        assert dead.id not in await world_ids(first)
    finally:
        await stop_all(first, second)


async def test_prevents_from_running_the_consistency_checks_twice_concurrently(db_url):
    """abnormal_states_recovery_test.rb: "consistency check" / "for plans assigned to invalid
    world" / "world invalidation" / "prevents from running the consistency checks twice on the
    same world concurrently".

    Dynflow runs the invalidation of a world under a ``world-invalidation:<id>`` lock, so two
    checks of the same dead world never interleave. Here two worlds invalidate the same dead
    world at once, in the interleaving a loaded machine produces at random (seen about once in
    15 runs without any help): the second world has found the dead world's execution lock and
    read the plan, then the first world recovers the plan and starts it, then the second world
    goes on. The plan must be recovered once: run by one world, its stored history
    ``start, terminate, start`` (by that world)."""
    dead, plan_id = await executing_then_killed(db_url)
    first, second = live_world(db_url), live_world(db_url)
    await first.start()
    await second.start()
    second_has_read = asyncio.Event()
    real_load_plan = second.store.load_plan

    async def slow_first_load(wanted: str, *args, **kwargs):
        if wanted != plan_id or second_has_read.is_set():
            return await real_load_plan(wanted, *args, **kwargs)
        plan = await real_load_plan(wanted, *args, **kwargs)
        second_has_read.set()
        try:  # the first world gets ahead (a lock held by this one would keep it out)
            await wait_for(lambda: _running(first, plan_id), timeout=2)
        except AssertionError:
            pass
        return plan

    second.store.load_plan = slow_first_load  # type: ignore[method-assign]
    try:
        checking = asyncio.ensure_future(second.invalidate_dead_worlds())
        await asyncio.wait_for(second_has_read.wait(), 10)
        await first.invalidate_dead_worlds()
        await checking
        runners = [w for w in (first, second) if w.is_running(plan_id)]
        assert len(runners) == 1
        runner = runners[0]
        plan = await runner.load_plan(plan_id)
        assert history(plan) == [
            ("start execution", dead.id),
            ("terminate execution", dead.id),
            ("start execution", runner.id),
        ]
        assert plan.state == "running"
        await wait_step_state(runner, plan_id, RUN_STEP, "suspended")
        await runner.event(plan_id, RUN_STEP, {"finish": True})
        assert_plan_reexecuted(await wait_plan_state(runner, plan_id))
        assert dead.id not in await world_ids(runner)
    finally:
        await stop_all(first, second)


async def _running(w, plan_id: str) -> bool:
    return w.is_running(plan_id)


async def test_handles_missing_execution_plans(db_url):
    """abnormal_states_recovery_test.rb: "consistency check" / "for plans assigned to invalid
    world" / "world invalidation" / "handles missing execution plans"."""
    dead = world(db_url)
    await dead.start()
    await put_execution_lock(dead, "missing", dead.id)
    await dead.abandon()
    other = live_world(db_url)
    await other.start()
    try:
        assert await other.invalidate_dead_worlds() == 1
        assert await lock_ids(other, EXECUTION_LOCK) == set()
        assert dead.id not in await world_ids(other)
    finally:
        await stop_all(other)


async def test_releases_singleton_locks_belonging_to_missing_execution_plan(db_url):
    """abnormal_states_recovery_test.rb: "consistency check" / "for plans assigned to invalid
    world" / "world invalidation" / "releases singleton locks belonging to missing execution
    plan".

    The dead world held the execution lock and a singleton lock of a plan that is not stored
    (our planning takes singleton locks just before it stores the plan: a world killed in
    between leaves exactly this); the invalidation releases both."""
    from dynflow.locks import lock_data

    dead = world(db_url)
    await dead.start()
    await put_execution_lock(dead, "missing", dead.id)
    await put_lock(
        dead,
        SINGLETON_LOCK,
        "singleton-action:ActionClass",
        plan_owner("missing"),
        lock_data("missing"),
    )
    await dead.abandon()
    other = live_world(db_url)
    await other.start()
    try:
        assert await other.invalidate_dead_worlds() == 1
        assert await lock_ids(other, EXECUTION_LOCK) == set()
        assert await lock_ids(other, SINGLETON_LOCK) == set()
    finally:
        await stop_all(other)


# ---- "world invalidation" / "planning locks" -----------------------------------------------------
async def _planning_interrupted(db_url: str, root_step_state: str | None):
    """A world dies while planning a due delayed plan: plan ``planning``, its planning lock
    held by the dead world. (Only delayed plans are stored while being planned here: an
    immediate ``plan``/``trigger`` is planned in memory and stored whole.)"""
    dead = world(db_url)
    await dead.start()
    scheduled = await dead.delay(Counted, None)
    await claim_for_planning(dead, scheduled.id, root_step_state)
    await dead.abandon()
    return dead, scheduled.id


async def test_releases_orphaned_planning_locks_and_executes_the_plans(db_url):
    """abnormal_states_recovery_test.rb: "consistency check" / "for plans assigned to invalid
    world" / "world invalidation" / "planning locks" / "releases orphaned planning locks and
    executes associated execution plans".

    Dynflow's plan finished planning (every plan step ``success``) when its world died; it is
    executed. Ours is planned again (its planning had not been stored) and executed."""
    Counted.runs.clear()
    dead, plan_id = await _planning_interrupted(db_url, "success")
    other = world(db_url, auto_recover=True, delayed_executor_interval=15.0)
    await other.start()
    try:
        plan = await wait_plan_state(other, plan_id)
        assert (plan.state, plan.result) == ("stopped", "success")
        assert Counted.runs == {plan_id: 1}
        assert await lock_ids(other, PLANNING_LOCK) == set()
        assert await lock_ids(other, EXECUTION_LOCK) == set()
        assert dead.id not in await world_ids(other)
    finally:
        await stop_all(other)


async def test_stops_plans_which_did_not_finish_planning(db_url):
    """abnormal_states_recovery_test.rb: "consistency check" / "for plans assigned to invalid
    world" / "world invalidation" / "planning locks" / "releases orphaned planning locks and
    stops associated execution plans which did not finish planning".

    Dynflow: the plan step is still ``pending``, so the plan becomes ``stopped`` and its lock is
    released; it is not executed.

    INTENDED DIFFERENCE (docs/dynflow-differences.md): a delayed plan is planned in memory and
    stored whole, so one left ``planning`` has nothing half-done in the database; it is
    scheduled again and runs once, instead of being dropped (its caller asked for it)."""
    Counted.runs.clear()
    dead, plan_id = await _planning_interrupted(db_url, None)
    other = world(db_url, auto_recover=True, delayed_executor_interval=15.0)
    await other.start()
    try:
        plan = await wait_plan_state(other, plan_id)
        assert await lock_ids(other, PLANNING_LOCK) == set()
        assert plan.result == "success"
        assert history_names(plan).count("start execution") == 1
        assert Counted.runs.get(plan_id, 0) == 1
    finally:
        await stop_all(other)


async def test_releases_orphaned_planning_locks_without_execution_plans(db_url):
    """abnormal_states_recovery_test.rb: "consistency check" / "for plans assigned to invalid
    world" / "world invalidation" / "planning locks" / "releases orphaned planning locks without
    execution plans"."""
    dead = world(db_url)
    await dead.start()
    missing = new_uuid()
    await put_lock(
        dead,
        PLANNING_LOCK,
        planning_lock_id(missing),
        dead.id,
        {"world_id": dead.id, "execution_plan_id": missing},
    )
    await dead.abandon()
    other = live_world(db_url)
    await other.start()
    try:
        assert await other.invalidate_dead_worlds() == 1
        assert dead.id not in await world_ids(other)
        assert await lock_ids(other, PLANNING_LOCK) == set()
    finally:
        await stop_all(other)


# ---- "auto execute" ------------------------------------------------------------------------------
async def test_prevents_from_running_the_auto_execution_twice(db_url):
    """abnormal_states_recovery_test.rb: "consistency check" / "auto execute" / "prevents from
    running the auto-execution twice".

    Dynflow holds an ``auto-execute`` lock while auto-executing; we have none, each plan is
    guarded by its execution lock. Two worlds auto-executing at the same moment run every
    waiting plan once."""
    Gated.runs.clear()
    Gated.gate = asyncio.Event()
    first = world(db_url)
    await first.start()
    planned = [await first.plan(Gated) for _ in range(3)]
    await first.stop()
    a, b = live_world(db_url, auto_execute=True), live_world(db_url, auto_execute=True)
    serialize_migrations(a, b)
    try:
        await asyncio.gather(a.start(), b.start())
        runners = {}
        for plan in planned:
            assert [w.is_running(plan.id) for w in (a, b)].count(True) == 1
            runners[plan.id] = a if a.is_running(plan.id) else b
        Gated.gate.set()
        for plan in planned:
            runner = runners[plan.id]
            done = await wait_plan_state(runner, plan.id)
            assert (done.state, done.result) == ("stopped", "success")
            assert history(done) == [
                ("start execution", runner.id),
                ("finish execution", runner.id),
            ]
        assert Gated.runs == {plan.id: 1 for plan in planned}
    finally:
        Gated.gate.set()
        await stop_all(a, b)


async def test_prevents_from_running_the_auto_execution_twice_after_a_stale_read(db_url):
    """abnormal_states_recovery_test.rb: "consistency check" / "auto execute" / "prevents from
    running the auto-execution twice" (the second interleaving).

    Two worlds auto-execute at once, as two processes starting together after a restart: the
    second world has read the waiting plan (``planned``) when the first one executes it to the
    end. Dynflow's ``auto-execute`` lock keeps the second world out (and its executor checks the
    plan's state once it holds the execution lock): the plan runs once and stays
    ``stopped``/``success``."""
    Counted.runs.clear()
    first = world(db_url)
    await first.start()
    planned = await first.plan(Counted)
    await first.stop()
    a, b = live_world(db_url, auto_execute=True), live_world(db_url, auto_execute=True)
    serialize_migrations(a, b)
    b_has_read = asyncio.Event()
    real_load_plan = b.store.load_plan

    async def slow_first_load(wanted: str, *args, **kwargs):
        plan = await real_load_plan(wanted, *args, **kwargs)
        if wanted == planned.id and not b_has_read.is_set():
            b_has_read.set()

            async def finished_elsewhere() -> bool:
                stored = await real_load_plan(wanted)
                return stored is not None and stored.state == "stopped"

            try:  # the other world gets ahead (an auto-execute lock would keep it out)
                await wait_for(finished_elsewhere, timeout=2)
            except AssertionError:
                pass
        return plan

    b.store.load_plan = slow_first_load  # type: ignore[method-assign]
    try:
        b_starting = asyncio.ensure_future(b.start())
        await asyncio.wait_for(b_has_read.wait(), 10)
        await a.start()
        await b_starting

        async def idle() -> bool:
            return not a.is_running(planned.id) and not b.is_running(planned.id)

        await wait_for(idle)
        plan = await a.load_plan(planned.id)
        assert (plan.state, plan.result) == ("stopped", "success")
        assert history(plan) == [("start execution", a.id), ("finish execution", a.id)]
        assert Counted.runs == {planned.id: 1}
    finally:
        await stop_all(a, b)


async def test_re_runs_the_plans_that_were_planned_but_not_executed(db_url):
    """abnormal_states_recovery_test.rb: "consistency check" / "auto execute" / "re-runs the
    plans that were planned but not executed"."""
    Counted.runs.clear()
    first = world(db_url)
    await first.start()
    planned = await first.plan(Counted)
    await first.stop()
    assert planned.state == "planned"
    executor = world(db_url, auto_execute=True)
    await executor.start()
    try:
        plan = await wait_plan_state(executor, planned.id)
        assert (plan.state, plan.result) == ("stopped", "success")
        assert history(plan) == [
            ("start execution", executor.id),
            ("finish execution", executor.id),
        ]
        assert Counted.runs == {planned.id: 1}
    finally:
        await stop_all(executor)


async def test_re_runs_the_plans_that_were_terminated_but_not_re_executed(db_url):
    """abnormal_states_recovery_test.rb: "consistency check" / "auto execute" / "re-runs the
    plans that were terminated but not re-executed (because no available executor)"."""
    first = world(db_url)
    await first.start()
    triggered = await first.trigger(Waiting)
    await wait_step_state(first, triggered.id, RUN_STEP, "suspended")
    await first.stop()  # terminated while executing: the plan is parked
    executor = world(db_url, auto_execute=True)
    await executor.start()
    try:
        assert executor.is_running(triggered.id)
        await wait_step_state(executor, triggered.id, RUN_STEP, "suspended")
        await executor.event(triggered.id, RUN_STEP, {"finish": True})
        plan = await wait_plan_state(executor, triggered.id)
        assert_plan_reexecuted(plan)
        assert plan.execution_history[0]["world_id"] == first.id
        assert plan.execution_history[-1]["world_id"] == executor.id
    finally:
        await stop_all(executor)


async def test_doesnt_rerun_the_plans_that_were_paused_with_error(db_url):
    """abnormal_states_recovery_test.rb: "consistency check" / "auto execute" / "doesn't rerun
    the plans that were paused with error"."""
    first = world(db_url)
    await first.start()
    failed = await (await first.trigger(Failing)).wait(10)
    assert failed.state == "paused"
    await first.stop()
    executor = world(db_url, auto_execute=True)
    await executor.start()  # auto-executes before it returns
    try:
        assert not executor.is_running(failed.id)
        plan = await executor.load_plan(failed.id)
        assert (plan.state, plan.result) == ("paused", "error")
        assert history(plan) == [("start execution", first.id), ("pause execution", first.id)]
    finally:
        await stop_all(executor)


# ---- "#worlds_validity_check" --------------------------------------------------------------------
async def test_performs_the_validity_check_on_world_creation(db_url):
    """abnormal_states_recovery_test.rb: "consistency check" / "#worlds_validity_check" / "the
    auto_validity_check is enabled" / "performs the validity check on world creation if
    auto_validity_check enabled"."""
    client = live_world(db_url)
    await client.start()
    checking = world(db_url, auto_recover=True)
    try:
        await put_world_record(client, "123", last_seen=None)
        assert "123" in await world_ids(client)
        await checking.start()
        assert "123" not in await world_ids(client)
        assert {client.id, checking.id} <= await world_ids(client)
    finally:
        await stop_all(checking, client)


async def test_by_default_the_auto_validity_check_is_enabled_for_executor_worlds(db_url):
    """abnormal_states_recovery_test.rb: "consistency check" / "#worlds_validity_check" / "the
    auto_validity_check is enabled" / "by default, the auto_validity_check is enabled only for
    executor words".

    Every world of ours is an executor world; the check at start (``auto_recover``) is on by
    default. (The client-world half has no counterpart.)"""
    assert WorldConfig().auto_recover is True
    assert WorldConfig(db_url=db_url, pool_size=1).auto_recover is True


async def test_reports_the_validation_status(db_url):
    """abnormal_states_recovery_test.rb: "consistency check" / "#worlds_validity_check" / "the
    auto_validity_check is enabled" / "reports the validation status".

    Dynflow returns ``{world_id: :invalidated | :valid}``; ours returns how many worlds were
    invalidated, and ``worlds()`` tells which ones are alive."""
    client = live_world(db_url)
    await client.start()
    try:
        await put_world_record(client, "123", last_seen=None)
        assert await client.invalidate_dead_worlds() == 1
        assert "123" not in await world_ids(client)
        listed = {w["id"]: w for w in await client.worlds()}
        assert listed[client.id]["alive"] is True
        assert "123" not in listed
    finally:
        await stop_all(client)


async def test_allows_checking_only_without_actual_invalidation(db_url):
    """abnormal_states_recovery_test.rb: "consistency check" / "#worlds_validity_check" / "the
    auto_validity_check is enabled" / "allows checking only, without actual invalidation"."""
    client = live_world(db_url)
    await client.start()
    try:
        await put_world_record(client, "123", last_seen=None)
        far = {"hostname": "far.example.com"}
        await put_world_record(client, "456", meta=far, last_seen=long_ago())
        listed = {w["id"]: w for w in await client.worlds()}
        assert listed["123"]["alive"] is False
        assert listed["456"]["alive"] is False
        assert listed[client.id]["alive"] is True
        assert {"123", "456"} <= await world_ids(client)  # checked, not invalidated
    finally:
        await stop_all(client)


# ---- "#coordinator_validity_check" ---------------------------------------------------------------
async def test_coordinator_validity_check_on_world_creation(db_url):
    """abnormal_states_recovery_test.rb: "consistency check" / "#coordinator_validity_check" /
    "the auto_validity_check is enabled" / "performs the validity check on world creation if
    auto_validity_check enabled" (the first of that name: a new world).

    The delayed-executor lock of a world that is gone does not survive the start of a world
    that checks; a lock of a live world stays."""
    client = live_world(db_url)
    await client.start()
    triggered = await client.trigger(Waiting)  # the live world's lock: its execution lock
    await wait_step_state(client, triggered.id, RUN_STEP, "suspended")
    await put_lock(
        client,
        DELAYED_EXECUTOR_LOCK,
        DELAYED_EXECUTOR_ID,
        "invalid-world-id",
        {"world_id": "invalid-world-id"},
    )
    checking = world(db_url, auto_recover=True, delayed_executor_interval=15.0)
    try:
        await checking.start()

        async def invalid_lock_gone():
            owners = {
                r["owner_id"] for r in await client.store.find_records(cls=DELAYED_EXECUTOR_LOCK)
            }
            return "invalid-world-id" not in owners

        await wait_for(invalid_lock_gone)
        assert await lock_ids(client, EXECUTION_LOCK) == {f"execution-plan:{triggered.id}"}
        assert client.is_running(triggered.id)
    finally:
        await stop_all(checking, client)


async def test_locks_validity_check_releases_locks_of_missing_worlds(db_url):
    """abnormal_states_recovery_test.rb: "consistency check" / "#coordinator_validity_check" /
    "the auto_validity_check is enabled" / "performs the validity check on world creation if
    auto_validity_check enabled" (the second of that name: ``locks_validity_check``).

    Dynflow's check releases every lock owned by a world that has no record (its
    ``LockByWorld`` locks) and keeps the locks of live worlds. Besides Dynflow's
    delayed-executor lock, the cleaner's lock is one of those: left behind by a world killed
    while cleaning, no world could clean any more."""
    client = live_world(db_url)
    await client.start()
    try:
        triggered = await client.trigger(Waiting)
        await wait_step_state(client, triggered.id, RUN_STEP, "suspended")
        for cls, lock_id in (
            (DELAYED_EXECUTOR_LOCK, DELAYED_EXECUTOR_ID),
            (CLEANER_LOCK, "execution-plan-cleaner"),
        ):
            gone = "invalid-world-id"
            await put_lock(client, cls, lock_id, gone, {"world_id": gone})
        await client.invalidate_dead_worlds()
        assert await lock_ids(client, EXECUTION_LOCK) == {f"execution-plan:{triggered.id}"}
        assert await lock_ids(client, DELAYED_EXECUTOR_LOCK) == set()
        assert await lock_ids(client, CLEANER_LOCK) == set()
    finally:
        await stop_all(client)


async def test_unlocks_orphaned_singleton_action_locks(db_url):
    """abnormal_states_recovery_test.rb: "consistency check" / "#coordinator_validity_check" /
    "with singleton action locks" / "unlocks orphaned singleton action locks".

    Locks of a plan that is missing or stopped go, the lock of a running plan stays."""
    client = live_world(db_url)
    await client.start()
    try:
        running = await client.trigger(Waiting)
        await wait_step_state(client, running.id, RUN_STEP, "suspended")
        stopped = await (await client.trigger(Quick)).wait(10)
        assert stopped.state == "stopped"
        sample_uuid = "11111111-2222-3333-4444-555555555555"
        for cls_name, plan_id in (
            ("MyClass1", running.id),
            ("MyClass2", sample_uuid),
            ("MyClass3", stopped.id),
        ):
            await put_lock(
                client,
                SINGLETON_LOCK,
                f"singleton-action:{cls_name}",
                plan_owner(plan_id),
                {"execution_plan_id": plan_id},
            )
        await client.invalidate_dead_worlds()
        assert await lock_ids(client, SINGLETON_LOCK) == {"singleton-action:MyClass1"}
        assert await lock_ids(client, INHIBITION_LOCK) == set()
    finally:
        await stop_all(client)

