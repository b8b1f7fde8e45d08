"""Progress of steps and plans (spec §2.3; the original's executor_test "progress weights")."""

from __future__ import annotations

from typing import Any

import pytest

from dynflow import Action, World
from tests.support import dummy
from tests.support.waiting import wait_for


class Heavy(Action):
    """Weight 3; reports ``output['done']`` as its progress while suspended."""

    def run(self, event: Any = None) -> None:
        if event is None:
            self.output["done"] = 0.25
            self.suspend()
        if event == "half":
            self.output["done"] = 0.5
            self.suspend()

    def run_progress(self) -> float:
        return float(self.output.get("done", 0.0))

    def run_progress_weight(self) -> float:
        return 3.0


class Light(Action):
    def run(self) -> None:
        self.output["ok"] = True

    def finalize(self) -> None:
        pass

    def finalize_progress_weight(self) -> float:
        return 2.0


class Both(Action):
    def plan(self) -> None:
        with self.concurrence():
            self.plan_action(Heavy)
            self.plan_action(Light)


class Weightless(Action):
    def run(self) -> None:
        pass

    def run_progress_weight(self) -> float:
        return 0.0


class BrokenProgress(Action):
    def run(self, event: Any = None) -> None:
        if event is None:
            self.suspend()

    def run_progress(self) -> float:
        raise RuntimeError("no idea")


class FailThenMore(Action):
    def plan(self) -> None:
        with self.sequence():
            self.plan_action(dummy.FailingDummy)
            self.plan_action(dummy.Dummy)


def weights(plan: Any) -> dict[str, tuple[float, float]]:
    return {
        f"{type(plan.actions[s.action_id]).__name__}:{type(s).__name__}": (
            s.progress_done,
            s.progress_weight,
        )
        for s in [*plan.run_steps(), *plan.finalize_steps()]
    }


async def test_weights_are_set_at_planning(world: World) -> None:
    plan = await world.plan(Both)
    stored = await world.load_plan(plan.id)
    assert weights(stored) == {
        "Heavy:RunStep": (0.0, 3.0),
        "Light:RunStep": (0.0, 1.0),
        "Light:FinalizeStep": (0.0, 2.0),
    }
    assert stored.progress() == 0.0
    assert stored.to_hash()["progress"] == 0.0


async def test_weighted_mean_while_running_and_done_at_the_end(world: World) -> None:
    triggered = await world.trigger(Both)
    plan = await world.load_plan(triggered.id)
    heavy = next(s for s in plan.run_steps() if isinstance(plan.actions[s.action_id], Heavy))

    async def suspended_and_light_done() -> Any:
        p = await world.load_plan(triggered.id)
        light = [s for s in p.run_steps() if s.id != heavy.id][0]
        return p if p.steps[heavy.id].state == "suspended" and light.state == "success" else None

    plan = await wait_for(suspended_and_light_done)
    assert plan.steps[heavy.id].progress_done == 0.25
    # (0.25·3 + 1·1 + 0·2) / 6: the finalize step is still pending
    assert plan.progress() == pytest.approx((0.25 * 3 + 1) / 6)
    assert plan.to_hash()["progress"] == pytest.approx((0.25 * 3 + 1) / 6, abs=1e-4)

    await world.event(triggered.id, heavy.id, "half")
    plan = await world.load_plan(triggered.id)
    assert plan.progress() == pytest.approx((0.5 * 3 + 1) / 6)

    await world.event(triggered.id, heavy.id, "finish")
    done = await triggered.wait(10)
    stored = await world.load_plan(done.id)
    assert (stored.state, stored.result) == ("stopped", "success")
    assert weights(stored) == {
        "Heavy:RunStep": (1.0, 3.0),
        "Light:RunStep": (1.0, 1.0),
        "Light:FinalizeStep": (1.0, 2.0),
    }
    assert stored.progress() == 1.0


async def test_no_weight_means_done(world: World) -> None:
    done = await (await world.trigger(Weightless)).wait(5)
    plan = await world.load_plan(done.id)
    assert plan.steps[2].progress_weight == 0.0
    assert plan.progress() == 1.0


async def test_a_broken_progress_method_does_not_break_the_step(world: World) -> None:
    triggered = await world.trigger(BrokenProgress)

    async def suspended() -> Any:
        p = await world.load_plan(triggered.id)
        return p if p.steps[2].state == "suspended" else None

    plan = await wait_for(suspended)
    assert plan.steps[2].progress_done == 0.5
    assert plan.progress() == 0.5
    await world.event(triggered.id, 2, "go")
    assert (await triggered.wait(5)).result == "success"


async def test_skipped_steps_count_as_done(world: World) -> None:
    paused = await (await world.trigger(FailThenMore)).wait(5)
    plan = await world.load_plan(paused.id)
    assert plan.state == "paused"
    assert plan.progress() == pytest.approx(0.25)  # the failed step's 0.5 of two steps
    for step in plan.failed_steps():
        await world.skip_step(paused.id, step.id)
    done = await (await world.resume(paused.id))
    stored = await world.load_plan(done.id)
    assert (stored.state, stored.result) == ("stopped", "warning")
    assert stored.progress() == 1.0
