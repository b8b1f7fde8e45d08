"""The protocols between engine objects (docs/architecture.md, "Protocols between engine
objects"): what the executor reads from and hands to an action, what an action calls on the plan
it is planned into; and that the engine's objects keep out of each other's private attributes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from dynflow import Action
from dynflow import flow as flows
from dynflow.execution_plan import ExecutionPlan
from dynflow.step import FinalizeStep, RunStep

ROOT = Path(__file__).resolve().parent.parent.parent


class Both(Action):
    def run(self) -> None:
        pass

    def finalize(self) -> None:
        pass


class RunOnly(Action):
    def run(self) -> None:
        pass


class FinalizeOnly(Action):
    def finalize(self) -> None:
        pass


class Neither(Action):
    pass


class Parent(Action):
    def plan(self) -> None:
        with self.sequence():
            first = self.plan_action(RunOnly)
            self.plan_action(Both, value=first.output["x"])
        self.plan_action(FinalizeOnly)
        self.plan_self()


def _action(**kwargs: Any) -> Action:
    return Both(world=None, execution_plan_id="p", id=1, plan_step_id=1, run_step_id=2, **kwargs)


# ---- action <-> executor -------------------------------------------------------------------------
def test_planned_events_are_read_then_cleared() -> None:
    action = _action(phase="run")
    action.plan_event("a")
    action.plan_event("b", 5, optional=True)
    events = action.planned_events
    assert [(e.event, e.delay, e.optional, e.step_id) for e in events] == [
        ("a", None, False, 2),
        ("b", 5, True, 2),
    ]
    action.plan_event("c")
    assert len(events) == 2  # a snapshot: the executor's view does not move under it
    action.clear_planned_events()
    assert action.planned_events == ()


def test_pending_chunks_stay_until_cleared_and_the_drop_is_taken_once() -> None:
    action = _action(phase="run")
    action.output_chunk("one", timestamp=1.0)
    saved = action.pending_output_chunks
    assert saved == [{"chunk": "one", "kind": None, "timestamp": 1.0}]
    assert action.pending_output_chunks == saved  # reading does not take them
    action.clear_pending_output_chunks()
    assert action.pending_output_chunks == []
    assert saved == [{"chunk": "one", "kind": None, "timestamp": 1.0}]  # handed-over list kept
    assert action.take_output_chunks_drop() is False
    action.output_chunk("two")
    action.drop_output_chunks()
    assert action.pending_output_chunks == []
    assert action.take_output_chunks_drop() is True
    assert action.take_output_chunks_drop() is False


def test_stored_input_changes_and_the_changed_flag_are_taken_once() -> None:
    action = _action(phase="run")
    assert action.take_stored_input_changes() == []
    action.change_stored_input(dict)
    assert action.take_stored_input_changes() == [dict]
    assert action.take_stored_input_changes() == []
    assert action.take_input_changed() is False
    action.mark_input_changed()
    assert action.take_input_changed() is True
    assert action.take_input_changed() is False


def test_output_data_is_the_value_in_every_phase() -> None:
    planning = _action(output={"a": 1})
    assert planning.output_data == {"a": 1}  # while ``output`` would be a reference
    running = _action(phase="run", output={"a": 1})
    running.output = {"b": 2}
    assert running.output_data == {"b": 2}
    assert running.output_data is running.output


# ---- action <-> planner --------------------------------------------------------------------------
def test_plan_self_asks_the_plan_for_the_steps_the_class_has() -> None:
    for cls, has_run, has_finalize in (
        (Both, True, True),
        (RunOnly, True, False),
        (FinalizeOnly, False, True),
        (Neither, False, False),
    ):
        plan = ExecutionPlan.new(None)
        plan.plan(cls)
        assert plan.state == "planned", (cls, plan.steps)
        action = plan.root_action()
        assert action is not None
        assert (action.run_step_id is not None) == has_run
        assert (action.finalize_step_id is not None) == has_finalize
        if action.run_step_id is not None:
            assert isinstance(plan.steps[action.run_step_id], RunStep)
        if action.finalize_step_id is not None:
            assert isinstance(plan.steps[action.finalize_step_id], FinalizeStep)


def test_children_flows_and_step_order() -> None:
    plan = ExecutionPlan.new(None)
    plan.plan(Parent)
    assert plan.state == "planned"
    # plan steps 1 (Parent), 2 (RunOnly: run 3), 4 (Both: run 5, finalize 6), 7 (FinalizeOnly:
    # finalize 8); the parent has neither run nor finalize.
    assert plan.step_ids == [1, 2, 3, 4, 5, 6, 7, 8]
    assert plan.run_flow.encode() == flows.Sequence([flows.Atom(3), flows.Atom(5)]).encode()
    assert list(plan.finalize_flow.step_ids()) == [6, 8]
    parent = plan.root_action()
    assert parent is not None
    assert [type(a) for a in plan.planned_actions(parent)] == [RunOnly, Both, FinalizeOnly]


# ---- the rule ------------------------------------------------------------------------------------
def test_engine_objects_keep_out_of_each_others_private_attributes() -> None:
    files = [
        f"src/dynflow/{name}.py"
        for name in (
            "action", "executor", "execution_plan", "world", "delayed", "middleware", "sub_plans",
        )
    ]
    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run(
        [str(ruff), "check", "--select", "SLF001", "--no-cache", *files],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
