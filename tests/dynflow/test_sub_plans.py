"""V2 sub-plans: batches, polling, concurrency limit, failures, cancel, resume (spec §1.5)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, ClassVar

from dynflow import ABORT, CANCEL, Action, WithSubPlans, World
from dynflow.sub_plans import PING
from tests.support.waiting import wait_for

POLL = 0.05


async def finish(
    world: World, action_class: type[Action], *args: Any, timeout: float = 15, **kw: Any
) -> Any:
    triggered = await world.trigger(action_class, *args, **kw)
    plan = await triggered.wait(timeout)
    return await world.load_plan(plan.id)


# ---- children ------------------------------------------------------------------------------------
class Child(Action):
    def run(self) -> None:
        self.output["done"] = self.input["item"]


class FailingChild(Action):
    def run(self) -> None:
        raise RuntimeError(f"item {self.input['item']} is broken")


CONCURRENCY = {"now": 0, "max": 0}


class SlowChild(Action):
    """Counts how many of its kind are between start and end of their run at once."""

    async def run(self, event: Any = None) -> None:
        if event is None:
            CONCURRENCY["now"] += 1
            CONCURRENCY["max"] = max(CONCURRENCY["max"], CONCURRENCY["now"])
            self.plan_event("wake", self.input.get("delay", 0.15))
            self.suspend()
        CONCURRENCY["now"] -= 1
        self.output["done"] = True


class CancellableChild(Action):
    """Waits for an event; finishes successfully on Cancel or Abort, recording which."""

    cancellable = True

    def run(self, event: Any = None) -> None:
        if event is None:
            self.suspend()
        self.output["got"] = "cancel" if event == CANCEL else "abort" if event == ABORT else event


PLANNING = {"fail": False}


class SometimesUnplannable(Action):
    def plan(self, item: int) -> None:
        if PLANNING["fail"]:
            raise RuntimeError("cannot plan now")
        self.plan_self(item=item)

    def run(self) -> None:
        self.output["done"] = True


CHILDREN: dict[str, type[Action]] = {
    "ok": Child,
    "slow": SlowChild,
    "cancellable": CancellableChild,
    "unplannable": SometimesUnplannable,
}


# ---- parents -------------------------------------------------------------------------------------
class Parent(WithSubPlans):
    """Spawns ``count`` children (items 0..count-1) of the kind named by ``child``."""

    def plan(
        self,
        count: int,
        child: str = "ok",
        batch: int = 100,
        limit: int | None = None,
        fail_at: list[int] | None = None,
        delay: float | None = None,
    ) -> None:
        if limit is not None:
            self.limit_concurrency_level(limit)
        self.plan_self(count=count, child=child, batch=batch, fail_at=fail_at or [], delay=delay)

    def total_count(self) -> int:
        return self.input["count"]

    def batch_size(self) -> int:
        return self.input["batch"]

    def batch(self, from_: int, size: int) -> list[int]:
        return list(range(self.input["count"]))[from_ : from_ + size]

    def polling_interval(self) -> float:
        return POLL

    async def create_sub_plans(self) -> list[Any]:
        items = self.current_batch()
        self.output.setdefault("batches", []).append(list(items))
        results = []
        for item in items:
            cls = FailingChild if item in self.input["fail_at"] else CHILDREN[self.input["child"]]
            kwargs: dict[str, Any] = {"item": item}
            if self.input.get("delay") is not None:
                kwargs["delay"] = self.input["delay"]
            results.append(await self.trigger(cls, **kwargs))
        return results

    def on_planning_finished(self) -> None:
        self.output["planning_finished"] = self.output.get("planning_finished", 0) + 1

    async def on_finish(self) -> None:
        self.output["on_finish"] = True


class DirectTriggerParent(Parent):
    """Triggers through the world directly and returns nothing (counts come from the database)."""

    async def create_sub_plans(self) -> None:
        assert self.world is not None
        for item in self.current_batch():
            await self.world.trigger_with_options(
                Child, kwargs={"item": item}, caller_action=self
            )


def counts(output: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "total_count", "failed_count", "success_count", "pending_count", "planned_count",
        "cancelled_count",
    )
    return {k: output.get(k) for k in keys}


# ---- tests ---------------------------------------------------------------------------------------
async def test_all_children_succeed_and_link_to_the_parent(world):
    plan = await finish(world, Parent, 3)
    assert (plan.state, plan.result) == ("stopped", "success")
    parent = plan.actions[1]
    assert counts(parent.output) == {
        "total_count": 3, "failed_count": 0, "success_count": 3, "pending_count": 0,
        "planned_count": 3, "cancelled_count": 0,
    }
    assert parent.output["on_finish"] is True
    assert parent.output["planning_finished"] == 1
    assert "cancelled_timestamp" not in parent.output
    assert plan.steps[parent.run_step_id].progress_done == 1

    subs = await world.sub_plans(plan.id, parent.id)
    assert len(subs) == 3
    items = set()
    for sub in subs:
        child_plan = await world.load_plan(sub.id)
        assert (child_plan.state, child_plan.result) == ("stopped", "success")
        root = child_plan.actions[1]
        assert root.caller_execution_plan_id == plan.id
        assert root.caller_action_id == parent.id
        assert root.is_root
        items.add(root.output["done"])
    assert items == {0, 1, 2}
    statuses = await world.store.plan_statuses(
        {"caller_execution_plan_id": plan.id, "caller_action_id": parent.id}
    )
    assert {s["state"] for s in statuses.values()} == {"stopped"}


async def test_a_failing_child_fails_the_parent(world):
    plan = await finish(world, Parent, 3, fail_at=[1])
    assert (plan.state, plan.result) == ("paused", "error")
    parent = plan.actions[1]
    step = plan.steps[parent.run_step_id]
    assert step.state == "error"
    assert step.error["message"] == "A sub task failed"
    assert step.error["exception_class"] == "SubtaskFailedException"
    assert counts(parent.output) == {
        "total_count": 3, "failed_count": 1, "success_count": 2, "pending_count": 0,
        "planned_count": 3, "cancelled_count": 0,
    }
    assert "on_finish" not in parent.output
    statuses = await world.plan_statuses({"caller_execution_plan_id": plan.id})
    assert sorted((s["state"], s["result"]) for s in statuses.values()) == [
        ("paused", "error"), ("stopped", "success"), ("stopped", "success"),
    ]


async def test_children_are_spawned_in_batches(world):
    plan = await finish(world, Parent, 5, batch=2)
    assert (plan.state, plan.result) == ("stopped", "success")
    parent = plan.actions[1]
    assert parent.output["batches"] == [[0, 1], [2, 3], [4]]
    assert counts(parent.output) == {
        "total_count": 5, "failed_count": 0, "success_count": 5, "pending_count": 0,
        "planned_count": 5, "cancelled_count": 0,
    }
    assert parent.output["planning_finished"] == 1
    subs = await world.sub_plans(plan.id, parent.id)
    items = [(await world.load_plan(s.id)).actions[1].input["item"] for s in subs]
    assert sorted(items) == [0, 1, 2, 3, 4]


async def test_children_triggered_directly_are_counted_from_the_database(world):
    plan = await finish(world, DirectTriggerParent, 4, batch=3)
    assert (plan.state, plan.result) == ("stopped", "success")
    assert counts(plan.actions[1].output) == {
        "total_count": 4, "failed_count": 0, "success_count": 4, "pending_count": 0,
        "planned_count": 4, "cancelled_count": 0,
    }
    assert await world.count_plans({"caller_execution_plan_id": plan.id}) == 4


async def test_concurrency_limit_bounds_unfinished_children(world):
    CONCURRENCY.update(now=0, max=0)
    plan = await finish(world, Parent, 5, child="slow", limit=2, delay=0.1)
    assert (plan.state, plan.result) == ("stopped", "success")
    parent = plan.actions[1]
    assert parent.input["dynflow"] == {"concurrency_limit": 2}
    assert counts(parent.output)["success_count"] == 5
    # batches shrink to the free capacity: never more than two children at once
    assert all(len(b) <= 2 for b in parent.output["batches"])
    assert sum(len(b) for b in parent.output["batches"]) == 5
    assert CONCURRENCY["max"] == 2
    assert CONCURRENCY["now"] == 0
    # the same seen from the database: at no instant more than two child plans were unfinished
    subs = await world.sub_plans(plan.id, parent.id)
    marks = sorted(
        [(s.started_at, 1) for s in subs] + [(s.ended_at, -1) for s in subs],
        key=lambda m: (m[0], m[1]),
    )
    alive = peak = 0
    for _, delta in marks:
        alive += delta
        peak = max(peak, alive)
    assert peak == 2


async def _cancel_when_running(world: World, count: int, force: bool) -> Any:
    triggered = await world.trigger(Parent, count, child="cancellable", limit=2)
    plan_id = triggered.id

    async def children_waiting() -> bool:
        subs = await world.sub_plans(plan_id, 1)
        if len(subs) < 2:
            return False
        for sub in subs:
            child = await world.load_plan(sub.id)
            if child.steps[child.actions[1].run_step_id].state != "suspended":
                return False
        return True

    await wait_for(children_waiting)
    assert await world.cancel(plan_id, force=force) == 1
    await triggered.wait(10)
    return await world.load_plan(plan_id)


async def test_cancel_is_forwarded_to_running_children(world):
    plan = await _cancel_when_running(world, 4, force=False)
    assert (plan.state, plan.result) == ("paused", "error")
    parent = plan.actions[1]
    assert plan.steps[parent.run_step_id].error["message"] == "A sub task failed"
    # two children were running and got Cancel; two were never planned and count as cancelled
    assert counts(parent.output) == {
        "total_count": 4, "failed_count": 0, "success_count": 2, "pending_count": 0,
        "planned_count": 2, "cancelled_count": 2,
    }
    stamp = parent.output["cancelled_timestamp"]
    assert stamp.endswith("Z")
    assert datetime.fromisoformat(stamp.removesuffix("Z")) <= datetime.now(UTC).replace(tzinfo=None)
    # planning ended early because of the cancel
    assert parent.output["planning_finished"] == 1
    subs = await world.sub_plans(plan.id, parent.id)
    assert len(subs) == 2
    for sub in subs:
        child = await world.load_plan(sub.id)
        assert child.actions[1].output == {"got": "cancel"}


async def test_abort_is_forwarded_to_running_children(world):
    plan = await _cancel_when_running(world, 3, force=True)
    assert (plan.state, plan.result) == ("paused", "error")
    parent = plan.actions[1]
    assert parent.output["cancelled_count"] == 1
    subs = await world.sub_plans(plan.id, parent.id)
    outputs = [(await world.load_plan(s.id)).actions[1].output for s in subs]
    assert outputs == [{"got": "abort"}, {"got": "abort"}]


async def test_zero_children_succeed_with_full_progress(world):
    plan = await finish(world, Parent, 0)
    assert (plan.state, plan.result) == ("stopped", "success")
    parent = plan.actions[1]
    assert counts(parent.output) == {
        "total_count": 0, "failed_count": 0, "success_count": 0, "pending_count": 0,
        "planned_count": 0, "cancelled_count": 0,
    }
    assert parent.output["on_finish"] is True
    assert plan.steps[parent.run_step_id].progress_done == 1
    assert plan.progress() == 1
    assert parent.run_progress() == 1
    assert await world.count_plans({"caller_execution_plan_id": plan.id}) == 0


async def test_run_progress_follows_finished_children(world):
    action = Parent(world=world, execution_plan_id="x", id=1, plan_step_id=1, phase="run")
    assert action.run_progress() == 0.1
    action.output.update(
        total_count=4, planned_count=4, success_count=1, failed_count=1, pending_count=2,
        cancelled_count=0,
    )
    assert action.run_progress() == 0.5


async def test_resume_retries_children_that_all_failed_to_plan(world):
    PLANNING["fail"] = True
    try:
        plan = await finish(world, Parent, 2, child="unplannable")
    finally:
        PLANNING["fail"] = False
    assert (plan.state, plan.result) == ("paused", "error")
    assert plan.actions[1].output["failed_count"] == 2
    assert await world.count_plans({"caller_execution_plan_id": plan.id}) == 2

    done = await world.resume(plan.id)
    await asyncio.wait_for(done, 10)
    plan = await world.load_plan(plan.id)
    assert (plan.state, plan.result) == ("stopped", "success")
    parent = plan.actions[1]
    assert parent.output["resumed_count"] == 2
    assert counts(parent.output) == {
        "total_count": 2, "failed_count": 0, "success_count": 2, "pending_count": 0,
        "planned_count": 2, "cancelled_count": 0,
    }
    assert await world.count_plans({"caller_execution_plan_id": plan.id}) == 4


class RestartParent(Parent):
    """Records every resume (run with no event after the first) in a class-level log."""

    resumes: ClassVar[list[int]] = []

    async def run(self, event: Any = None) -> None:
        if event is None and self.output.get("total_count") is not None:
            type(self).resumes.append(self.output["planned_count"])
        await super().run(event)


async def test_restart_continues_without_respawning(db_url):
    RestartParent.resumes.clear()
    CONCURRENCY.update(now=0, max=0)
    options: dict[str, Any] = {"cleaner_interval": None, "termination_timeout": 5}
    first = World(db_url, auto_execute=False, **options)
    await first.start()
    try:
        triggered = await first.trigger(RestartParent, 4, child="slow", limit=2, delay=0.3)
        plan_id = triggered.id

        async def two_planned() -> bool:
            plan = await first.load_plan(plan_id)
            return plan.actions[1].output.get("planned_count") == 2

        await wait_for(two_planned)
    finally:
        await first.stop()
    CONCURRENCY.update(now=0, max=0)

    second = World(db_url, auto_execute=True, **options)
    await second.start()
    try:
        async def finished() -> Any:
            # the Ping stored before the restart keeps polling: no second chain of Pings
            events = await second.store.planned_events_of(plan_id)
            assert len([e for e in events if e["event"] == PING]) <= 1
            plan = await second.load_plan(plan_id)
            return plan if plan.state == "stopped" else None

        plan = await wait_for(finished)
    finally:
        await second.stop()
    assert plan.result == "success"
    parent = plan.actions[1]
    assert RestartParent.resumes == [2]
    assert counts(parent.output) == {
        "total_count": 4, "failed_count": 0, "success_count": 4, "pending_count": 0,
        "planned_count": 4, "cancelled_count": 0,
    }
    items = [b for batch in parent.output["batches"] for b in batch]
    assert items == [0, 1, 2, 3]
    assert CONCURRENCY["max"] <= 2
