"""Flow shapes of planning (spec §1.3 conformance examples) and flow encoding."""

from __future__ import annotations

import pytest

from dynflow import ExecutionPlan
from dynflow import flow as flows
from tests.support.code_workflow import ISSUES, Commit, IncomingIssues


def plan_of(action_class, *args):
    plan = ExecutionPlan.new(None)
    plan.plan(action_class, args)
    return plan


def test_incoming_issues_flows():
    plan = plan_of(IncomingIssues, ISSUES)
    assert plan.state == "planned"
    assert plan.run_flow.encode() == ["C", ["S", 4, 7, 9], ["S", 13, 16, 18]]
    assert plan.finalize_flow.encode() == ["S", 5, 10, 14, 19, 20]
    assert plan.step_ids == list(range(1, 21))


def test_commit_flow_orders_merge_after_its_inputs():
    plan = plan_of(Commit, {"sha": "abc"})
    assert plan.run_flow.encode() == ["S", ["C", 3, 5, 7], 9]
    assert plan.finalize_flow.encode() == ["S"]


def test_output_reference_is_stored_unresolved():
    plan = plan_of(IncomingIssues, ISSUES)
    update_issue = plan.actions[4].to_hash()
    assert update_issue["run_step_id"] == 7
    assert update_issue["finalize_step_id"] is None
    assert update_issue["input"]["assignee"] == {
        "class": "Dynflow::ExecutionPlan::OutputReference",
        "execution_plan_id": plan.id,
        "step_id": 4,
        "action_id": 3,
        "subkeys": ["classification", "assignee"],
    }


def test_planning_error_stops_at_first_failure():
    plan = plan_of(IncomingIssues, [{"author": "a", "text": "fail planning"}, ISSUES[0]])
    assert plan.state == "stopped"
    assert plan.result == "error"
    assert len(plan.steps) == 3
    assert plan.steps[3].error["message"] == "Trolling detected"
    assert plan.steps[3].error["exception_class"] == "RuntimeError"


@pytest.mark.parametrize(
    "encoded",
    [["C"], ["S"], 3, ["S", ["C", 3, 5, 7], 9], ["C", ["S", 4, 7, 9], ["S", 13, 16, 18]]],
)
def test_flow_round_trip(encoded):
    assert flows.decode(encoded).encode() == encoded


def test_normalisation_splices_and_unwraps():
    seq = flows.Sequence([flows.Concurrence([flows.Atom(1)]), flows.Sequence([flows.Atom(2)])])
    seq.normalise()
    assert seq.encode() == ["S", 1, 2]
