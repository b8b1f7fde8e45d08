"""Conformance: Dynflow's test/dispatcher_test.rb ("dispatcher").

Dynflow runs each scenario with four connectors: Direct and Database, each "all in one" (one
world that is client and executor) and "multi executor multi client" (client-only worlds and
executor worlds). Our engine has no connector and no client-only world: every world executes
the plans it triggers, worlds sharing a database see each other through their world records
(heartbeat), and a plan is run by the world holding its execution lock. So Direct and Database
collapse into one, "all in one" is one world, and "multi executor multi client" is two or three
worlds on the same database (with distinct host names in their meta, so that none takes the
others, which live in this same process, for dead).

Ported behaviours: execution, events (delivered to the right step, refused when the step does
not accept them, an optional one discarded quietly), an action acting as a client of its own
world, re-execution by another executor after a termination, and ping/pong as the liveness of
the world records (fresh while the heartbeat runs, gone after a termination, a stale record
pruned).

Skipped:

* ".../ "ping/pong" / "succeeds when the world is available without cache" and "time-outs when
  the world is not responding without cache" (all four connectors) — there is no ping request
  between worlds here, only the world records' heartbeat (the cached ping, ported below).
* "dispatcher" / "... multi executor multi client" / "fails to finish the future when no
  executor available" (Direct and Database) — there are no client-only worlds: the world that
  triggers a plan executes it, so "no executor available" cannot happen.
* The connectors' envelope plumbing itself (Direct's actor round robin, the Database
  connector's envelopes table and LISTEN/NOTIFY) — Ruby-only machinery.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from dynflow import Action, EventRejected, ExecutionRejected, SuspendedHandle, World
from dynflow.world import WORLD_RECORD
from tests.support.dummy import Dummy, Waiting
from tests.support.waiting import wait_for, wait_plan_state, wait_step_state


# ---- actions (Support::DummyExample) -------------------------------------------------------------
class EventedAction(Action):
    """``DeprecatedEventedAction``: suspends; an event is stored in ``output['event']``; the
    ``timeout`` it plans for itself fails it."""

    async def run(self, event: Any = None) -> None:
        if event == "timeout":
            self.output["event"] = "timeout"
            raise RuntimeError("action timeouted")
        if event is None:
            if self.input.get("timeout"):
                self.plan_event("timeout", float(self.input["timeout"]))
            self.suspend()
        self.output["event"] = event


_NOTIFIERS: set[asyncio.Task[Any]] = set()


class ComposedAction(Action):
    """``ComposedAction``: triggers a ``Dummy`` plan from its run (the executor acting as a
    client) and, once that plan finished, sends ``finish`` to itself."""

    async def run(self, event: Any = None) -> None:
        if event is None:
            assert self.world is not None
            sub_plan = await self.world.trigger(Dummy)
            self.output["sub_plan_id"] = sub_plan.id
            if self.input.get("timeout"):
                self.plan_event("timeout", float(self.input["timeout"]))

            def when_finished(handle: SuspendedHandle) -> None:
                async def notify() -> None:
                    await sub_plan.wait(10)
                    await handle.event("finish")

                task = asyncio.get_running_loop().create_task(notify())
                _NOTIFIERS.add(task)
                task.add_done_callback(_NOTIFIERS.discard)

            self.suspend(when_finished)
        self.output["event"] = event


# ---- worlds --------------------------------------------------------------------------------------
def _world(db_url: str, name: str, **options: Any) -> World:
    settings: dict[str, Any] = {
        "cleaner_interval": None,
        "auto_execute": False,
        "termination_timeout": 5,
        "meta": {"hostname": f"dispatcher-test-{name}"},
    }
    settings.update(options)
    return World(db_url, **settings)


@asynccontextmanager
async def _worlds(db_url: str, *names: str, **options: Any) -> AsyncIterator[list[World]]:
    worlds = [_world(db_url, name, **options) for name in names]
    started: list[World] = []
    try:
        for w in worlds:
            await w.start()
            started.append(w)
        yield worlds
    finally:
        for w in reversed(started):
            await w.stop()


async def _suspended_step(world: World, plan_id: str) -> int:
    async def find() -> int | None:
        plan = await world.load_plan(plan_id)
        if plan is None:
            return None
        steps = [s.id for s in plan.steps.values() if s.state == "suspended"]
        return steps[0] if steps else None

    return await wait_for(find)


# ---- connector basics: execution passing ---------------------------------------------------------
async def test_execution_passing_succeeds_all_in_one(world: World) -> None:
    """dispatcher_test.rb: "dispatcher" / "direct connector - all in one" / "connector basics" /
    "execution passing" / "succeeds when expected" (and the same under "database connector -
    all in one")."""
    result = await world.trigger(Dummy)
    plan = await result.wait(10)
    assert plan.result == "success"
    assert plan.state == "stopped"


async def test_execution_passing_succeeds_multi_world(db_url: str) -> None:
    """dispatcher_test.rb: "dispatcher" / "direct connector - multi executor multi client" /
    "connector basics" / "execution passing" / "succeeds when expected" (and the same under
    "database connector - multi executor multi client"): a plan made in one world is executed
    by another; while that one runs it, executing it elsewhere is refused."""
    async with _worlds(db_url, "client", "executor") as (client, executor):
        plan = await client.plan(Waiting)
        assert plan.state == "planned"
        future = await executor.execute(plan.id)
        step_id = await _suspended_step(client, plan.id)
        # the plan is owned by the executor world now: nobody else may execute it
        with pytest.raises(ExecutionRejected):
            await client.execute(plan.id)
        with pytest.raises(ExecutionRejected):
            await executor.execute(plan.id)
        await executor.event(plan.id, step_id, {"finish": True})
        done = await asyncio.wait_for(future, 10)
        assert (done.state, done.result) == ("stopped", "success")
        stored = await client.load_plan(plan.id)
        assert (stored.state, stored.result) == ("stopped", "success")
        assert {h["world_id"] for h in stored.execution_history} == {executor.id}


# ---- connector basics: event passing -------------------------------------------------------------
async def test_event_passing_succeeds_all_in_one(world: World) -> None:
    """dispatcher_test.rb: "dispatcher" / "direct connector - all in one" / "connector basics" /
    "event passing" / "succeeds when expected" (and the same under "database connector - all in
    one")."""
    result = await world.trigger(EventedAction, timeout=3)
    step_id = await _suspended_step(world, result.id)
    await world.event(result.id, step_id, "finish")
    plan = await result.wait(10)
    assert plan.actions[1].output["event"] == "finish"
    assert (plan.state, plan.result) == ("stopped", "success")


async def test_event_passing_succeeds_multi_world(db_url: str) -> None:
    """dispatcher_test.rb: "dispatcher" / "direct connector - multi executor multi client" /
    "connector basics" / "event passing" / "succeeds when expected" (and the same under
    "database connector - multi executor multi client"): the event is sent through a world
    that does not run the plan; Dynflow's dispatcher routes it to the executor owning it.

    INTENDED DIFFERENCE for now (docs/dynflow-differences.md): a world takes events only for
    the plans it runs; another world refuses them clearly (EventRejected) and the sender
    retries where the plan runs. Routing between worlds (LISTEN/NOTIFY) comes with the
    multi-node deployment."""
    async with _worlds(db_url, "executor", "client") as (executor, client):
        result = await executor.trigger(EventedAction, timeout=3)
        step_id = await _suspended_step(client, result.id)
        with pytest.raises(EventRejected):
            await client.event(result.id, step_id, "finish")
        await executor.event(result.id, step_id, "finish")
        plan = await result.wait(10)
        assert plan.actions[1].output["event"] == "finish"


async def test_fails_the_future_when_the_step_is_not_accepting_events(world: World) -> None:
    """dispatcher_test.rb: "dispatcher" / "direct connector - all in one" / "connector basics" /
    "event passing" / "fails the future when the step is not accepting events" (and the same
    under "database connector - all in one")."""
    result = await world.trigger(Dummy, text="dummy")
    plan = await result.wait(10)
    first_step = next(iter(plan.steps.values()))
    with pytest.raises(EventRejected):
        await world.event(plan.id, first_step.id, "finish")

    # while a plan runs, only its suspended step takes events: not its plan step
    running = await world.trigger(EventedAction, timeout=3)
    step_id = await _suspended_step(world, running.id)
    plan = await world.load_plan(running.id)
    assert plan.root_plan_step_id != step_id
    with pytest.raises(EventRejected, match="not suspended"):
        await world.event(running.id, plan.root_plan_step_id, "finish")
    await world.event(running.id, step_id, "finish")
    done = await running.wait(10)
    assert done.actions[1].output["event"] == "finish"


async def test_fails_the_future_when_the_step_is_not_accepting_events_multi_world(
    db_url: str,
) -> None:
    """dispatcher_test.rb: "dispatcher" / "direct connector - multi executor multi client" /
    "connector basics" / "event passing" / "fails the future when the step is not accepting
    events" (and the same under "database connector - multi executor multi client")."""
    async with _worlds(db_url, "executor", "client") as (executor, client):
        result = await executor.trigger(Dummy, text="dummy")
        plan = await result.wait(10)
        first_step = next(iter(plan.steps.values()))
        with pytest.raises(EventRejected):
            await client.event(plan.id, first_step.id, "finish")


async def test_succeeds_when_executor_acts_as_client(world: World) -> None:
    """dispatcher_test.rb: "dispatcher" / "direct connector - all in one" / "connector basics" /
    "event passing" / "succeeds when executor acts as client" (and the same under the three
    other connectors: the action triggers from inside the executor in every one of them)."""
    result = await world.trigger(ComposedAction, timeout=3)
    plan = await result.wait(10)
    assert plan.actions[1].output["event"] == "finish"
    assert (plan.state, plan.result) == ("stopped", "success")
    sub_plan = await world.load_plan(plan.actions[1].output["sub_plan_id"])
    assert (sub_plan.state, sub_plan.result) == ("stopped", "success")


async def test_does_not_error_on_dispatching_an_optional_event(world: World) -> None:
    """dispatcher_test.rb: "dispatcher" / "direct connector - all in one" / "connector basics" /
    "event passing" / "does not error on dispatching an optional event" (and the same under the
    three other connectors). Dynflow rejects the request with "Could not find an executor for
    optional ..., discarding" without logging an error; ours returns quietly: discarded."""
    assert await world.event("123", 1, None, optional=True) is None
    # the same event, not optional, is an error
    with pytest.raises(EventRejected):
        await world.event("123", 1, None)


# ---- dynamic retry -------------------------------------------------------------------------------
async def test_client_passes_the_work_to_another_executor(db_url: str) -> None:
    """dispatcher_test.rb: "dispatcher" / "direct connector - multi executor multi client" /
    "when some executor is terminated and client is notified about the failure" / "client
    passes the work to another executor" (and the same under "database connector - multi
    executor multi client").

    INTENDED DIFFERENCE for now (docs/dynflow-differences.md): a world that stops parks its
    plans (``paused``, "terminate execution") for the next world that starts, which takes them
    over; a world already running does not. Take-over by running worlds comes with the
    multi-node deployment."""
    async with _worlds(db_url, "executor-1", "executor-2", heartbeat_interval=0.05) as (
        first,
        second,
    ):
        triggered = await first.trigger(Waiting)
        await wait_step_state(second, triggered.id, 2, "suspended")
        await first.stop()  # the executor running the plan terminates
        assert not second.is_running(triggered.id)
        parked = await second.load_plan(triggered.id)
        assert (parked.state, parked.result) == ("paused", "pending")
        third = _world(db_url, "executor-3", auto_execute=True)
        await third.start()  # a world starting takes the parked plan over
        try:
            await wait_step_state(third, triggered.id, 2, "suspended")
            await third.event(triggered.id, 2, {"finish": True})
            plan = await wait_plan_state(third, triggered.id, "stopped")
        finally:
            await third.stop()
        plan = await wait_plan_state(second, triggered.id, "stopped")
        assert (plan.state, plan.result) == ("stopped", "success")
        assert [h["name"] for h in plan.execution_history] == [
            "start execution",
            "terminate execution",
            "start execution",
            "finish execution",
        ]
        assert plan.execution_history[0]["world_id"] != plan.execution_history[-1]["world_id"]


# ---- ping/pong: the world records ----------------------------------------------------------------
def _entry(worlds: list[dict[str, Any]], world_id: str) -> dict[str, Any] | None:
    return next((w for w in worlds if w["id"] == world_id), None)


async def test_ping_succeeds_when_the_world_is_available(db_url: str) -> None:
    """dispatcher_test.rb: "dispatcher" / "direct connector - multi executor multi client" /
    "ping/pong" / "succeeds when the world is available" (and the same under the three other
    connectors: in "all in one" the world pings itself)."""
    async with _worlds(db_url, "executor", "client") as (executor, client):
        seen = _entry(await client.worlds(), executor.id)
        assert seen is not None and seen["alive"] and seen["active"]
        itself = _entry(await executor.worlds(), executor.id)
        assert itself is not None and itself["alive"] and itself["current"]


async def test_ping_times_out_when_the_world_is_not_responding(db_url: str) -> None:
    """dispatcher_test.rb: "dispatcher" / "direct connector - multi executor multi client" /
    "ping/pong" / "time-outs when the world is not responding" (and the same under the three
    other connectors)."""
    async with _worlds(db_url, "client") as (client,):
        executor = _world(db_url, "executor")
        await executor.start()
        try:
            assert _entry(await client.worlds(), executor.id) is not None
        finally:
            await executor.stop()  # terminated
        assert _entry(await client.worlds(), executor.id) is None


async def test_caches_the_pings_and_pongs(db_url: str) -> None:
    """dispatcher_test.rb: "dispatcher" / "direct connector - multi executor multi client" /
    "ping/pong" / "caches the pings and pongs" (and the same under the three other connectors):
    the records are fresh because of the heartbeat; an expired one is not, and is pruned."""
    async with _worlds(db_url, "executor", "client", heartbeat_interval=0.05) as (
        executor,
        client,
    ):

        async def last_seen(world_id: str) -> float:
            records = await client.store.find_records(cls=WORLD_RECORD, record_id=world_id)
            return float(records[0]["data"]["last_seen_epoch"])

        before = await last_seen(executor.id)

        async def refreshed() -> bool:
            return await last_seen(executor.id) > before

        await wait_for(refreshed)  # the heartbeat keeps the record fresh
        worlds = await client.worlds()
        assert _entry(worlds, client.id)["alive"]
        assert _entry(worlds, executor.id)["alive"]

        # a world whose record was last seen 1000 s ago
        ghost = "00000000-0000-0000-0000-00000000dead"
        record = {
            "class": WORLD_RECORD,
            "id": ghost,
            "meta": {"hostname": "dispatcher-test-ghost", "pid": 1},
            "last_seen_epoch": time.time() - 1000,
            "active": True,
        }
        assert await client.store.acquire_lock(WORLD_RECORD, ghost, f"world:{ghost}", record)
        assert _entry(await client.worlds(), ghost)["alive"] is False
        assert await client.invalidate_dead_worlds() == 1
        worlds = await client.worlds()
        assert _entry(worlds, ghost) is None
        assert _entry(worlds, executor.id)["alive"]
