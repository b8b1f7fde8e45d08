"""Actions and helpers for the sub-plan conformance ports (v2_sub_plans_test.rb,
batch_sub_tasks_test.rb, semaphores_test.rb, concurrency_control_test.rb).

After the ``ParentAction``/``ChildAction`` pairs of those Ruby files: a V2 ``WithSubPlans``
parent over the items ``1..count`` with a batch size of 5, optionally a concurrency limit, and
children whose end the test controls.

The Ruby tests drive the parent with a managed clock and a mocked persistence; here the parent
runs for real and the test stands in for the clock: with a long polling interval (60 s) no Ping
fires by itself, and :func:`ping` delivers one (``clock.progress``); the children are
:class:`GatedChild` plans that finish when :func:`release` sends them ``"go"``, so the counts
the parent reads from the database are exactly those the Ruby test stubs.

Only the test files of this port use this module.
"""

from __future__ import annotations

import time
from typing import Any

from dynflow import Action, WithSubPlans, World
from dynflow.execution_plan import ExecutionPlan
from dynflow.sub_plans import PING
from tests.support.waiting import wait_for, wait_step_state

LONG_POLL = 60.0  # no Ping fires by itself during a test: the test delivers them
SHORT_POLL = 0.05  # the parent polls by itself, quickly

COUNT_KEYS = (
    "total_count",
    "planned_count",
    "pending_count",
    "success_count",
    "failed_count",
    "cancelled_count",
)

# FailureSimulator of the Ruby tests: children fail to plan while set.
PLANNING: dict[str, bool] = {"fail": False}


# ---- children ------------------------------------------------------------------------------------
class Child(Action):
    """``ChildAction`` of the Ruby tests: runs and is done."""

    async def run(self) -> None:
        self.output["run"] = True


class GatedChild(Action):
    """Suspends until it gets ``"go"`` (see :func:`release`), then finishes successfully."""

    async def run(self, event: Any = None) -> None:
        if event == "go":
            self.output["run"] = True
            return
        self.suspend()


class TickingChild(Action):
    """Suspends and wakes itself a moment later: a child that is unfinished for a while."""

    async def run(self, event: Any = None) -> None:
        if event is None:
            self.plan_event("wake", self.input.get("delay", 0.05))
            self.suspend()
        self.output["run"] = True


class UnplannableChild(Action):
    """Fails to plan while ``PLANNING['fail']`` is set (``raise "Simulated failure"``)."""

    def plan(self, item: int) -> None:
        if PLANNING["fail"]:
            raise RuntimeError("Simulated failure")
        self.plan_self(item=item)

    async def run(self) -> None:
        self.output["run"] = True


CHILDREN: dict[str, type[Action]] = {
    "ok": Child,
    "gated": GatedChild,
    "ticking": TickingChild,
    "unplannable": UnplannableChild,
}


# ---- the parent ----------------------------------------------------------------------------------
class Parent(WithSubPlans):
    """``ParentAction``: ``count`` items ``1..count``, batches of ``batch`` (5), an optional
    concurrency limit; ``create_sub_plans`` counts its calls in ``output['batch_count']`` and
    records every batch in ``output['batches']``.

    For the assertions the Ruby tests make between two clock steps, every run appends the counts
    it left behind to ``output['trace']``, and every Ping it plans is recorded with its delay in
    ``output['pings']`` (None: at once, a number: after that many seconds).
    """

    def plan(
        self,
        count: int,
        limit: int | None = None,
        *,
        batch: int = 5,
        poll: float = LONG_POLL,
        child: str = "gated",
    ) -> None:
        if limit is not None:
            self.limit_concurrency_level(limit)
        self.plan_self(count=count, batch=batch, poll=poll, child=child)

    def total_count(self) -> int:
        return int(self.input["count"])

    def batch_size(self) -> int:
        return int(self.input["batch"])

    def batch(self, from_: int, size: int) -> list[int]:
        return list(range(1, self.total_count() + 1))[from_ : from_ + size]

    def polling_interval(self) -> float:
        return float(self.input["poll"])

    async def create_sub_plans(self) -> list[Any]:
        self.output["batch_count"] = self.output.get("batch_count", 0) + 1
        items = list(self.current_batch())
        self.output.setdefault("batches", []).append(items)
        child = CHILDREN[self.input["child"]]
        return [await self.trigger(child, item=item) for item in items]

    def plan_event(self, event: Any, delay_seconds: float | None = None, **kwargs: Any) -> None:
        if event == PING:
            self.output.setdefault("pings", []).append(delay_seconds)
        super().plan_event(event, delay_seconds, **kwargs)

    async def run(self, event: Any = None) -> None:
        try:
            await super().run(event)
        finally:
            entry = {key: self.output.get(key) for key in COUNT_KEYS}
            entry["event"] = event
            self.output.setdefault("trace", []).append(entry)


# ---- helpers -------------------------------------------------------------------------------------
def counts(output: dict[str, Any]) -> dict[str, Any]:
    return {key: output.get(key) for key in COUNT_KEYS}


async def parent_action(world: World, plan_id: str) -> Parent:
    plan = await world.load_plan(plan_id)
    assert plan is not None
    action = plan.actions[1]
    assert isinstance(action, Parent)
    return action


async def wait_parent(world: World, plan_id: str, predicate: Any = None) -> Parent:
    """Wait until the parent's run step is stored ``suspended`` (its run is over) and
    ``predicate(action)`` holds; returns the loaded parent action."""

    async def ready() -> Parent | None:
        plan = await world.load_plan(plan_id)
        if plan is None:
            return None
        action = plan.actions[1]
        assert isinstance(action, Parent)
        if action.run_step_id is None or plan.steps[action.run_step_id].state != "suspended":
            return None
        return action if predicate is None or predicate(action) else None

    return await wait_for(ready)


async def ping(world: World, plan_id: str) -> None:
    """The managed clock's ``progress``: deliver a Ping to the parent now and wait until its
    run has processed it."""
    action = await parent_action(world, plan_id)
    assert action.run_step_id is not None
    await world.event(plan_id, action.run_step_id, PING)


async def latest_ping_due(world: World, plan_id: str) -> float:
    """Seconds from now until the last Ping the parent planned is due."""
    events = await world.store.planned_events_of(plan_id)
    pings = [e["deliver_at"] for e in events if e["event"] == PING]
    assert pings, "no Ping is planned"
    return max(pings) - time.time()


async def children(world: World, plan_id: str) -> dict[int, ExecutionPlan]:
    """The sub-plans of the parent (action 1 of ``plan_id``), by item."""
    result = {}
    for sub in await world.sub_plans(plan_id, 1):
        child = await world.load_plan(sub.id)
        assert child is not None
        result[int(child.actions[1].input["item"])] = child
    return result


async def release(world: World, child: ExecutionPlan) -> None:
    """Let a :class:`GatedChild` finish; returns once its plan is stored ``stopped``."""
    step_id = child.actions[1].run_step_id
    assert step_id is not None
    await wait_step_state(world, child.id, step_id, "suspended")
    await world.event(child.id, step_id, "go")
    await wait_for(lambda: _stopped(world, child.id))


async def _stopped(world: World, plan_id: str) -> bool:
    plan = await world.load_plan(plan_id)
    return plan is not None and plan.state == "stopped"


async def unfinished_children(world: World, plan_id: str) -> int:
    """How many sub-plans of the parent are not ``stopped`` now."""
    statuses = await world.plan_statuses(
        {"caller_execution_plan_id": plan_id, "caller_action_id": 1}
    )
    return sum(1 for s in statuses.values() if s["state"] != "stopped")


def peak_concurrency(subs: list[ExecutionPlan]) -> int:
    """The most sub-plans that were between their start and end at one instant (from the
    stored ``started_at``/``ended_at``; an end sorts before a start at the same instant)."""
    marks = sorted([(s.started_at, 1) for s in subs] + [(s.ended_at, -1) for s in subs])
    alive = peak = 0
    for _, delta in marks:
        alive += delta
        peak = max(peak, alive)
    return peak
