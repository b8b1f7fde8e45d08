"""State machines and the derived result (spec §2.1-§2.3)."""

from __future__ import annotations

import pytest

from dynflow import ExecutionPlan, IllegalTransition
from dynflow.states import PLAN_STATES, PLAN_TRANSITIONS, derive_result
from dynflow.step import FinalizeStep, PlanStep, RunStep


@pytest.mark.parametrize("old", PLAN_STATES)
@pytest.mark.parametrize("new", PLAN_STATES)
def test_plan_transitions(old, new):
    plan = ExecutionPlan.new(None)
    plan.state = old
    if old == new or new in PLAN_TRANSITIONS[old]:
        plan.set_state(new)
        assert plan.state == new
    else:
        with pytest.raises(IllegalTransition):
            plan.set_state(new)
        assert plan.state == old


def test_stopped_is_terminal_and_sets_times():
    plan = ExecutionPlan.new(None)
    plan.set_state("planning")
    assert plan.started_at is not None
    plan.set_state("stopped")
    assert plan.ended_at is not None and plan.real_time >= 0
    assert [h["name"] for h in plan.execution_history] == ["finish execution"]
    with pytest.raises(IllegalTransition):
        plan.set_state("running")


@pytest.mark.parametrize(
    ("cls", "old", "new", "ok"),
    [
        (RunStep, "pending", "running", True),
        (RunStep, "running", "suspended", True),
        (RunStep, "suspended", "running", True),
        (RunStep, "error", "skipping", True),
        (RunStep, "skipping", "skipped", True),
        (RunStep, "success", "suspended", True),
        (RunStep, "skipped", "running", False),
        (RunStep, "success", "running", False),
        (RunStep, "pending", "success", False),
        (FinalizeStep, "success", "pending", True),
        (FinalizeStep, "error", "skipped", True),
        (FinalizeStep, "running", "suspended", False),
        (PlanStep, "scheduling", "cancelled", True),
        (PlanStep, "success", "running", False),
    ],
)
def test_step_transitions(cls, old, new, ok):
    step = cls("p", 1, 1, "A", old)
    if ok:
        step.set_state(new)
        assert step.state == new
    else:
        with pytest.raises(IllegalTransition):
            step.set_state(new)


@pytest.mark.parametrize(
    ("states", "result"),
    [
        (["success", "cancelled", "error"], "cancelled"),
        (["success", "error", "skipped"], "error"),
        (["success", "skipping"], "warning"),
        (["success", "skipped"], "warning"),
        (["success", "success"], "success"),
        (["success", "running"], "pending"),
        (["suspended"], "pending"),
    ],
)
def test_derived_result(states, result):
    assert derive_result(states) == result
