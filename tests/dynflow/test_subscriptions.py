"""Subscriptions: planning an action plans its subscribers too (spec §1.1, §1.3; the original's
action_test "subscribed_actions" and execution_plan_test "subscriptions" cases)."""

from __future__ import annotations

from typing import Any

from dynflow import Action, World
from dynflow.step import PlanStep

RAN: list[tuple[str, dict[str, Any]]] = []


class DummyTrigger(Action):
    """Plans nothing to run: only its subscribers have run steps."""


class DummyAnotherTrigger(Action):
    def run(self) -> None:
        RAN.append(("another", dict(self.input)))


class DummySubscribe(Action):
    subscribe = DummyTrigger

    def run(self) -> None:
        RAN.append(("subscribe", dict(self.input)))


class DummyMultiSubscribe(Action):
    @classmethod
    def subscribe(cls) -> list[type[Action]]:
        return [DummyTrigger, DummyAnotherTrigger]

    def run(self) -> None:
        RAN.append(("multi", dict(self.input)))


class Producer(Action):
    def plan(self, value: int) -> None:
        self.plan_self(value=value)

    def run(self) -> None:
        self.output["doubled"] = self.input["value"] * 2


class Consumer(Action):
    """Subscribed by name; uses the trigger's output, so it runs after it."""

    subscribe = ["tests.dynflow.test_subscriptions.Producer"]

    def plan(self, value: int) -> None:
        assert self.from_subscription and isinstance(self.triggering_action, Producer)
        self.plan_self(seen=self.triggering_action.output["doubled"], value=value)

    def run(self) -> None:
        self.output["seen"] = self.input["seen"]


class Fragile(Action):
    def plan(self, **input: Any) -> None:
        self.plan_self(**input)

    def run(self) -> None:
        pass


class Breaking(Action):
    subscribe = [Fragile]

    def plan(self, **input: Any) -> None:
        if input.get("break"):
            raise RuntimeError("subscriber refuses")
        self.plan_self(**input)


class Outer(Action):
    def plan(self) -> None:
        with self.sequence():
            self.plan_action(DummyAnotherTrigger, where="inside")
            self.plan_action(Producer, 1)


async def test_subscribed_actions(world: World) -> None:
    assert world.subscribed_actions(DummyTrigger) == [DummySubscribe, DummyMultiSubscribe]
    assert world.subscribed_actions(DummyAnotherTrigger) == [DummyMultiSubscribe]
    assert world.subscribed_actions(DummySubscribe) == []
    assert world.subscribed_actions(Producer) == [Consumer]
    assert DummyMultiSubscribe.subscriptions() == [DummyTrigger, DummyAnotherTrigger]


async def test_plans_the_subscribers_in_the_same_plan(world: World) -> None:
    plan = await world.plan(DummyTrigger, {"key": "value"})
    assert plan.state == "planned"
    # step 1 plans DummyTrigger, 2/3 DummySubscribe, 4/5 DummyMultiSubscribe
    assert plan.to_hash()["run_flow"] == ["C", 3, 5]
    assert plan.steps[1].children == [2, 4]
    trigger = plan.actions[1]
    for action_id, cls in ((2, DummySubscribe), (3, DummyMultiSubscribe)):
        action = plan.actions[action_id]
        assert type(action) is cls
        assert action.from_subscription and action.triggering_action is trigger
        assert action.caller_action_id == 1
        assert action.input == {"key": "value"}  # the trigger's input


async def test_subscribers_run_with_the_trigger_input(world: World) -> None:
    RAN.clear()
    done = await (await world.trigger(DummyAnotherTrigger, {"host": "a"})).wait(10)
    assert (done.state, done.result) == ("stopped", "success")
    assert sorted(RAN) == [("another", {"host": "a"}), ("multi", {"host": "a"})]
    plan = await world.load_plan(done.id)
    # the trigger's own run step and its subscriber's run concurrently
    assert plan.to_hash()["run_flow"] == ["C", 2, 4]


async def test_a_subscriber_using_the_trigger_output_runs_after_it(world: World) -> None:
    done = await (await world.trigger(Producer, 21)).wait(10)
    plan = await world.load_plan(done.id)
    assert (plan.state, plan.result) == ("stopped", "success")
    assert plan.to_hash()["run_flow"] == ["S", 2, 4]
    assert plan.actions[2].output == {"seen": 42}


async def test_subscriptions_of_nested_actions(world: World) -> None:
    done = await (await world.trigger(Outer)).wait(10)
    plan = await world.load_plan(done.id)
    assert (plan.state, plan.result) == ("stopped", "success")
    names = {a.id: type(a).__name__ for a in plan.actions.values()}
    assert sorted(names.values()) == [
        "Consumer", "DummyAnotherTrigger", "DummyMultiSubscribe", "Outer", "Producer",
    ]
    # sequence(concurrence(another, multi), sequence(producer, consumer)), spliced
    flow = plan.to_hash()["run_flow"]
    assert flow[0] == "S" and flow[1][0] == "C" and len(flow) == 4


async def test_a_failing_subscriber_fails_the_planning(world: World) -> None:
    result = await world.trigger(Fragile, **{"break": True})
    assert not result.planned
    assert result.error["message"] == "subscriber refuses"
    plan = await world.load_plan(result.id)
    assert (plan.state, plan.result) == ("stopped", "error")
    states = {
        plan.actions[s.action_id].name(): s.state
        for s in plan.steps.values()
        if isinstance(s, PlanStep)
    }
    assert states["tests.dynflow.test_subscriptions.Breaking"] == "error"
    assert states["tests.dynflow.test_subscriptions.Fragile"] == "error"
