"""``Action.change_stored_input``: an action rewrites its stored input (e.g. forgets passwords),
written in the same transaction as the step's save; output references stay references."""

from __future__ import annotations

from typing import Any

from dynflow import Action
from dynflow.action import REFERENCE_CLASS
from dynflow.errors import PlanningError
from dynflow.persistence.store import UPDATE_ACTION, UPDATE_ACTION_INPUT, UPDATE_STEP
from tests.support.waiting import wait_plan_state, wait_step_state


def forget_password(stored: dict[str, Any]) -> dict[str, Any]:
    return {**stored, "password": None}


class Forgetful(Action):
    """Suspends; the event ``finish`` ends it and forgets the password of its input."""

    def run(self, event: Any = None) -> None:
        if event is None:
            self.output["password_seen"] = self.input["password"] == "MARKER-pw"
            self.suspend()
        self.change_stored_input(forget_password)
        assert self.input["password"] == "MARKER-pw"  # unchanged until the run returns
        self.output["done"] = True


class Produce(Action):
    def run(self) -> None:
        self.output["value"] = 42


class Consume(Action):
    def run(self) -> None:
        self.output["got"] = self.input["value"]
        self.change_stored_input(forget_password)


class Pipeline(Action):
    def plan(self) -> None:
        produced = self.plan_action(Produce)
        self.plan_action(Consume, value=produced.output["value"], password="MARKER-pw")


class BrokenChange(Action):
    def run(self) -> None:
        self.change_stored_input(lambda stored: {**stored, "bad": object()})


class ChangesWhilePlanning(Action):
    def plan(self) -> None:
        self.change_stored_input(forget_password)


async def test_the_changed_input_is_stored_with_the_step(world, monkeypatch) -> None:
    writes: list[list[Any]] = []
    original = world.store.write

    async def spy(resource: str, stmts: Any) -> bool:
        writes.append(list(stmts))
        return await original(resource, stmts)

    monkeypatch.setattr(world.store, "write", spy)
    triggered = await world.trigger(Forgetful, password="MARKER-pw", host="web01")
    plan_id = triggered.id
    plan = await wait_step_state(world, plan_id, 2, "suspended")
    assert plan.actions[1].input == {"password": "MARKER-pw", "host": "web01"}
    assert plan.actions[1].output == {"password_seen": True}
    await world.event(plan_id, 2, "finish")
    plan = await wait_plan_state(world, plan_id)
    assert plan.result == "success"
    assert plan.actions[1].input == {"password": None, "host": "web01"}
    assert plan.actions[1].output == {"password_seen": True, "done": True}
    # One transaction: the step's success, the action's output and its new input.
    [write] = [w for w in writes if any(s.sql is UPDATE_ACTION_INPUT for s in w)]
    statements = {s.sql for s in write}
    assert {UPDATE_STEP, UPDATE_ACTION, UPDATE_ACTION_INPUT} <= statements
    step = next(s for s in write if s.sql is UPDATE_STEP)
    assert step.params["state"] == "success"


async def test_output_references_are_stored_resolved_after_the_run(world) -> None:
    """As Dynflow stores an action after its run: the input with its references resolved
    (the change sees that input too)."""
    triggered = await world.trigger(Pipeline)
    plan = await wait_plan_state(world, triggered.id)
    assert plan.result == "success"
    consume = next(a for a in plan.actions.values() if isinstance(a, Consume))
    assert consume.output == {"got": 42}
    assert consume.input["password"] is None
    assert consume.to_hash()["input"]["value"] == 42
    planned = await world.plan(Pipeline)
    stored = next(a for a in planned.actions.values() if isinstance(a, Consume))
    assert stored.to_hash()["input"]["value"]["class"] == REFERENCE_CLASS  # until it runs


async def test_a_broken_change_fails_the_step(world) -> None:
    triggered = await world.trigger(BrokenChange, password="MARKER-pw")
    plan = await wait_plan_state(world, triggered.id, "paused")
    step = plan.steps[2]
    assert step.state == "error"
    assert "changing the input of" in step.error["message"]
    assert plan.actions[1].input == {"password": "MARKER-pw"}


async def test_only_in_the_run_phase(world) -> None:
    triggered = await world.trigger(ChangesWhilePlanning)
    plan = await wait_plan_state(world, triggered.id)
    assert plan.result == "error"
    error = plan.steps[plan.root_plan_step_id].error
    assert error["exception_class"] == PlanningError.__name__
    assert "only allowed in the run phase" in error["message"]
