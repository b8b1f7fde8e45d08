"""Conformance: Ruby Dynflow's ``test/execution_plan_test.rb`` against our engine.

Plan structure (run and finalize flow shapes, output references, planning errors,
serialization), results, labels, sub-plans, cancel and singleton locks, with the example
workflows of ``test/support/code_workflow_example.rb`` re-written below as faithfully as our
API allows (``IncomingIssues``/``IncomingIssue``/``Triage``/``UpdateIssue``/``NotifyAssignee``
subscribed to ``Triage``, ``Commit``, ``FastCommit``, ``Ci``, ``Review``, ``Merge``, ``Dummy``,
``DummyTrigger`` and its subscribers, ``CancelableSuspended``). Every test runs once on SQLite and
once on PostgreSQL (``db_url``, through the ``world`` fixture).

Flows are shown the way Ruby's ``PlanAssertions#inspect_flow`` shows them (``Dynflow::Flows::``
names, ``id: Class(state) {input}`` with Ruby ``inspect`` formatting and output references as
``Step(4).output[:classification][:assignee]``), read from the actions as stored, so the expected
texts are the Ruby test's own.

Every Ruby ``it`` of the file is ported. Partly re-expressed:

* ``"execution plan" / Dynflow::ExecutionPlan::Steps::Error / "doesn't fail when deserializing
  with missing class"``: only the part that applies (a stored error naming an exception class
  that exists nowhere loads, keeping that name and its message). Our steps keep errors as JSON
  hashes and never rebuild exception objects, so Ruby's ``UnknownError[RenamedError]`` class
  and its ``inspect`` have no equivalent and are not asserted.
* ``"#cancel"``: ``world.cancel`` returns how many steps it sent the event to (Ruby: the list
  of event futures), so "one event, then the plan finishes" is asserted as ``== 1`` and the
  end of the plan.
* ``"#result"``: Ruby forces step states with ``set_state(state, true)``; here the in-memory
  steps' ``state`` is assigned directly, and ``error?`` is ``result == "error"``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from dynflow import Action, Cancellable, ExecutionPlan, Polling, World
from dynflow.action import REFERENCE_CLASS, OutputReference
from dynflow.errors import PlanUnreadable
from dynflow.locks import SINGLETON_LOCK
from dynflow.serialization import format_time
from dynflow.singleton import Singleton
from tests.support.waiting import wait_for

TIMEOUT = 10.0

ISSUES_DATA = [
    {"author": "Peter Smith", "text": "Failing test"},
    {"author": "John Doe", "text": "Internal server error"},
]

FINALIZED: list[str] = []  # Ruby's TestExecutionLog.finalize (not asserted by these tests)


# ---- test/support/code_workflow_example.rb ---------------------------------------------------


class IncomingIssues(Action):
    def plan(self, issues: list[Any]) -> None:
        for issue in issues:
            self.plan_action(IncomingIssue, issue)
        self.plan_self(issues=issues)

    def finalize(self) -> None:
        FINALIZED.append(self.name())


class IncomingIssue(Action):
    def plan(self, issue: Any) -> None:
        if issue == "fail":
            raise RuntimeError("You want me to fail")
        self.plan_self(issue)
        self.plan_action(Triage, issue)


class Triage(Action):
    def plan(self, issue: dict[str, Any]) -> None:
        triage = self.plan_self(issue)
        self.plan_action(
            UpdateIssue,
            author=triage.input["author"],
            text=triage.input["text"],
            assignee=triage.output["classification"]["assignee"],
            severity=triage.output["classification"]["severity"],
        )

    def run(self) -> None:
        if self.input["text"] == "trolling":
            self.fail("Trolling detected")
        self.output["classification"] = {"assignee": "John Doe", "severity": "medium"}

    def finalize(self) -> None:
        if self.input["text"] == "trolling in finalize":
            self.fail("Trolling detected")
        FINALIZED.append(self.name())


class UpdateIssue(Action):
    def run(self) -> None:
        pass


class NotifyAssignee(Action):
    subscribe = (Triage,)

    def plan(self, *args: Any, **kwargs: Any) -> None:
        assert self.triggering_action is not None
        self.plan_self(triage=self.triggering_action.output)

    def run(self) -> None:
        pass

    def finalize(self) -> None:
        FINALIZED.append(self.name())


class Ci(Action):
    def run(self) -> None:
        self.output.update(passed=True)


class Review(Action):
    def plan(self, commit: dict[str, Any], reviewer: str, result: bool = True) -> None:
        self.plan_self(commit=commit, reviewer=reviewer, result=result)

    def run(self) -> None:
        self.output.update(passed=self.input["result"])


class Merge(Action):
    def run(self) -> None:
        self.output.update(
            passed=bool(self.input["ci_result"] and all(self.input["review_results"]))
        )


class Commit(Action):
    def plan(self, commit: dict[str, Any], reviews: dict[str, bool] | None = None) -> None:
        reviews = {"Morfeus": True, "Neo": True} if reviews is None else reviews
        with self.sequence():
            with self.concurrence():
                ci = self.plan_action(Ci, commit=commit)
                review_actions = [
                    self.plan_action(Review, commit, name, result)
                    for name, result in reviews.items()
                ]
            self.plan_action(
                Merge,
                commit=commit,
                ci_result=ci.output["passed"],
                review_results=[ra.output["passed"] for ra in review_actions],
            )


class FastCommit(Action):
    def plan(self, commit: dict[str, Any]) -> None:
        with self.sequence():
            with self.concurrence():
                ci = self.plan_action(Ci, commit=commit)
                review = self.plan_action(Review, commit, "Morfeus", True)
            self.plan_action(
                Merge,
                commit=commit,
                ci_result=ci.output["passed"],
                review_results=[review.output["passed"]],
            )


class Dummy(Action):
    @property
    def label(self) -> str:
        return "dummy_action"


class DummyTrigger(Action):
    pass


class DummyAnotherTrigger(Action):
    pass


class DummySubscribe(Action):
    subscribe = (DummyTrigger,)

    def run(self) -> None:
        pass


class DummyMultiSubscribe(Action):
    subscribe = (DummyTrigger, DummyAnotherTrigger)

    def run(self) -> None:
        pass


class CancelableSuspended(Cancellable, Polling):
    def invoke_external_task(self) -> Any:
        return {"progress": 0}

    def poll_external_task(self) -> Any:
        progress = self.external_task["progress"]
        if progress == 30 and "cancel-external" in self.input["text"]:
            return {"progress": progress}
        return {"progress": progress + 10}

    def cancel_action(self) -> None:
        if "cancel-fail" in self.input["text"]:
            self.fail("action cancelled")
        self.external_task = {**self.external_task, "cancelled": True}

    def done(self) -> bool:
        return bool(self.external_task) and self.external_task["progress"] >= 100

    def poll_interval(self) -> float:
        return 0.01

    def run_progress(self) -> float:
        return (self.external_task or {}).get("progress", 0) / 100


class SingletonAction(Singleton):
    def run(self) -> None:
        if self.input.get("fail"):
            raise RuntimeError("Controlled Failure")


# ---- PlanAssertions of test/test_helper.rb ---------------------------------------------------


def ruby_inspect(value: Any) -> str:
    """A JSON value (with stored output references) the way Ruby's ``inspect`` shows it."""
    if isinstance(value, dict) and value.get("class") == REFERENCE_CLASS:
        return repr(
            OutputReference(
                value["execution_plan_id"], value["step_id"], value["action_id"], value["subkeys"]
            )
        )
    if isinstance(value, OutputReference):
        return repr(value)
    if isinstance(value, dict):
        items = (f"{ruby_inspect(k)}=>{ruby_inspect(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(ruby_inspect(v) for v in value) + "]"
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def short_class(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def inspect_flow(plan: ExecutionPlan, flow: Any, prefix: str = "") -> list[str]:
    from dynflow import flow as flows

    if isinstance(flow, flows.Atom):
        step = plan.steps[flow.step_id]
        action = plan.actions[step.action_id]
        line = (
            f"{prefix}{flow.step_id}: {short_class(step.action_class)}({step.state}) "
            f"{ruby_inspect(action.input)}"
        )
        if step.state != "pending":
            line += f" --> {ruby_inspect(action.output)}"
        return [line]
    kind = "Sequence" if isinstance(flow, flows.Sequence) else "Concurrence"
    name = f"Dynflow::Flows::{kind}"
    lines = [prefix + name]
    for child in flow.children:
        lines.extend(inspect_flow(plan, child, prefix + "  "))
    return lines


def dedent(expected: str) -> list[str]:
    lines = [line for line in expected.splitlines() if line.strip()]
    indent = min(len(line) - len(line.lstrip(" ")) for line in lines)
    return [line[indent:] for line in lines]


def assert_planning_success(plan: ExecutionPlan) -> None:
    for step_id in plan.step_ids:
        step = plan.steps[step_id]
        if step.kind == "PlanStep":
            assert step.state == "success", step.error


async def assert_run_flow(world: World, expected: str, plan: ExecutionPlan) -> None:
    """The run flow of ``plan`` as stored (actions read back from the store)."""
    assert_planning_success(plan)
    stored = await world.load_plan(plan.id)
    assert stored is not None
    assert inspect_flow(stored, stored.run_flow) == dedent(expected)


async def assert_finalize_flow(world: World, expected: str, plan: ExecutionPlan) -> None:
    assert_planning_success(plan)
    stored = await world.load_plan(plan.id)
    assert stored is not None
    assert inspect_flow(stored, stored.finalize_flow) == dedent(expected)


def assert_steps_equal(expected: Any, current: Any) -> None:
    assert current.id == expected.id
    assert type(current) is type(expected)
    assert current.state == expected.state
    assert current.action_class == expected.action_class
    assert current.action_id == expected.action_id
    if expected.kind == "PlanStep":
        assert current.children == expected.children


def inspect_plan_steps(plan: ExecutionPlan, step_id: int, prefix: str = "") -> list[str]:
    step = plan.steps[step_id]
    lines = [prefix + short_class(step.action_class)]
    for child in step.children or []:
        lines.extend(inspect_plan_steps(plan, child, prefix + "  "))
    return lines


async def change_rows(db_url: str, sql: str, **params: Any) -> None:
    """Edit stored rows behind the engine's back (as the Ruby test does through the adapter)."""
    engine = create_async_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(sql), params)
    finally:
        await engine.dispose()


def run_step_ids(plan: ExecutionPlan) -> list[int]:
    """Ruby's ``run_flow.all_step_ids``."""
    return list(plan.run_flow.step_ids())


# ---- serialization ---------------------------------------------------------------------------


async def test_serialized_plan_is_restored_properly(world: World) -> None:
    """execution_plan_test.rb: "execution plan" / "serialization" / "serialized execution plan"
    / "restores the plan properly"."""
    plan = await world.plan(FastCommit, {"sha": "abc123"})
    restored = await world.load_plan(plan.id)
    assert restored is not None and restored.unreadable is None
    assert restored.id == plan.id
    assert restored.label == plan.label
    assert restored.root_plan_step_id == plan.root_plan_step_id
    assert_steps_equal(
        plan.steps[plan.root_plan_step_id], restored.steps[restored.root_plan_step_id]
    )
    assert list(restored.steps) == list(plan.steps)
    for step_id, step in restored.steps.items():
        assert_steps_equal(step, plan.steps[step_id])
    assert inspect_flow(restored, restored.run_flow) == inspect_flow(plan, plan.run_flow)


async def test_plan_with_missing_steps_is_flagged_invalid(world: World, db_url: str) -> None:
    """execution_plan_test.rb: "execution plan" / "serialization" / "serialized execution plan"
    / "handles issues with loading the data"."""
    plan = await world.plan(FastCommit, {"sha": "abc123"})
    await change_rows(
        db_url, "DELETE FROM dynflow_steps WHERE execution_plan_uuid = :id", id=plan.id
    )
    # Dynflow loads it as an InvalidPlan (valid? false, a DataConsistencyError); our engine's
    # way of saying "cannot be read" is PlanUnreadable, or a plan marked ``unreadable``.
    loaded = None
    try:
        loaded = await world.load_plan(plan.id)
    except PlanUnreadable:
        flagged = True
    else:
        flagged = loaded is not None and loaded.unreadable is not None
    assert flagged, "a plan without its steps must not load as if it were whole"
    # The invalid plan still has its plain attributes.
    if loaded is None:
        [loaded] = await world.find_plans(filters={"uuid": [plan.id]})
    assert loaded.label == plan.label
    assert loaded.state == plan.state
    assert format_time(loaded.started_at) == format_time(plan.started_at)
    assert format_time(loaded.ended_at) == format_time(plan.ended_at)
    assert float(loaded.execution_time or 0.0) == float(plan.execution_time or 0.0)
    assert float(loaded.real_time or 0.0) == float(plan.real_time or 0.0)
    assert loaded.execution_history == plan.execution_history


# ---- label and result ------------------------------------------------------------------------


async def test_label_is_the_entry_actions_label(world: World) -> None:
    """execution_plan_test.rb: "execution plan" / "#label" / "is determined by the
    action#label method of entry action"."""
    plan = await world.plan(FastCommit, {"sha": "abc123"})
    dummy_plan = await world.plan(Dummy)
    assert plan.label == FastCommit.name()
    assert dummy_plan.label == "dummy_action"
    assert (await world.load_plan(plan.id)).label == FastCommit.name()
    assert (await world.load_plan(dummy_plan.id)).label == "dummy_action"


async def test_result_of_error_in_planning_phase(world: World) -> None:
    """execution_plan_test.rb: "execution plan" / "#result" / "for error in planning phase" /
    "should be :error"."""
    plan = await world.plan(FastCommit, {"sha": "abc123"})
    plan.steps[2].state = "error"  # Ruby: set_state :error, true (forced)
    assert plan.result == "error"
    assert [s.id for s in plan.failed_steps()] == [2]


async def test_result_of_error_in_running_phase(world: World) -> None:
    """execution_plan_test.rb: "execution plan" / "#result" / "for error in running phase" /
    "should be :error"."""
    plan = await world.plan(FastCommit, {"sha": "abc123"})
    plan.steps[run_step_ids(plan)[2]].state = "error"
    assert plan.result == "error"


async def test_result_of_pending_step_in_running_phase(world: World) -> None:
    """execution_plan_test.rb: "execution plan" / "#result" / "for pending step in running
    phase" / "should be :pending"."""
    plan = await world.plan(FastCommit, {"sha": "abc123"})
    plan.steps[run_step_ids(plan)[2]].state = "pending"
    assert plan.result == "pending"


async def test_result_of_all_steps_successful_or_skipped(world: World) -> None:
    """execution_plan_test.rb: "execution plan" / "#result" / "for all steps successful or
    skipped" / "should be :warning"."""
    plan = await world.plan(FastCommit, {"sha": "abc123"})
    for index, step_id in enumerate(run_step_ids(plan)):
        plan.steps[step_id].state = "skipped" if index == 2 else "success"
    assert plan.result == "warning"


# ---- sub plans, plan steps, persisted actions, custom id -------------------------------------


async def test_plan_is_not_its_own_sub_plan(world: World) -> None:
    """execution_plan_test.rb: "execution plan" / "sub plans" / "does not have itself as a sub
    plan"."""
    plan = await world.plan(IncomingIssues, ISSUES_DATA)
    assert len(plan.actions) >= 2
    assert await world.sub_plans(plan.id) == []


async def test_plan_steps_store_the_sub_actions(world: World) -> None:
    """execution_plan_test.rb: "execution plan" / "plan steps" / "stores the information about
    the sub actions"."""
    plan = await world.plan(IncomingIssues, ISSUES_DATA)
    expected = """
        IncomingIssues
          IncomingIssue
            Triage
              UpdateIssue
              NotifyAssignee
          IncomingIssue
            Triage
              UpdateIssue
              NotifyAssignee
    """
    assert inspect_plan_steps(plan, plan.root_plan_step_id) == dedent(expected)
    stored = await world.load_plan(plan.id)
    assert inspect_plan_steps(stored, stored.root_plan_step_id) == dedent(expected)


async def test_persisted_action_stores_its_step_ids(world: World) -> None:
    """execution_plan_test.rb: "execution plan" / "persisted action" / "stores the ids for
    plan, run and finalize steps"."""
    plan = await world.plan(IncomingIssues, ISSUES_DATA)
    stored = await world.load_plan(plan.id)
    action = stored.actions[stored.steps[4].action_id]
    assert action.plan_step_id == 3
    assert action.run_step_id == 4
    assert action.finalize_step_id == 5


async def test_custom_plan_id(world: World) -> None:
    """execution_plan_test.rb: "execution plan" / "custom plan id" / "allows setting custom id
    for the execution plan"."""
    sample_uuid = "60366107-9910-4815-a6c6-bc45ee2ea2b8"
    plan = await world.plan_with_options(IncomingIssues, args=(ISSUES_DATA,), id=sample_uuid)
    assert plan.id == sample_uuid
    stored = await world.load_plan(sample_uuid)
    assert stored is not None and stored.id == sample_uuid
    assert {a.execution_plan_id for a in stored.actions.values()} == {sample_uuid}


# ---- planning algorithm ----------------------------------------------------------------------


async def test_planning_single_dependencies(world: World) -> None:
    """execution_plan_test.rb: "execution plan" / "planning algorithm" / "single dependencies"
    / "constructs the plan of actions to be executed in run phase"."""
    plan = await world.plan(IncomingIssues, ISSUES_DATA)
    await assert_run_flow(
        world,
        """
        Dynflow::Flows::Concurrence
          Dynflow::Flows::Sequence
            4: Triage(pending) {"author"=>"Peter Smith", "text"=>"Failing test"}
            7: UpdateIssue(pending) {"author"=>"Peter Smith", "text"=>"Failing test", "assignee"=>Step(4).output[:classification][:assignee], "severity"=>Step(4).output[:classification][:severity]}
            9: NotifyAssignee(pending) {"triage"=>Step(4).output}
          Dynflow::Flows::Sequence
            13: Triage(pending) {"author"=>"John Doe", "text"=>"Internal server error"}
            16: UpdateIssue(pending) {"author"=>"John Doe", "text"=>"Internal server error", "assignee"=>Step(13).output[:classification][:assignee], "severity"=>Step(13).output[:classification][:severity]}
            18: NotifyAssignee(pending) {"triage"=>Step(13).output}
        """,  # noqa: E501
        plan,
    )


async def test_planning_stops_at_the_first_error(world: World) -> None:
    """execution_plan_test.rb: "execution plan" / "planning algorithm" / "error in planning
    phase" / "stops the planning right after the first error occurred"."""
    plan = await world.plan(IncomingIssues, ["fail", *ISSUES_DATA])
    assert len(plan.steps) == 2
    assert (plan.state, plan.result) == ("stopped", "error")
    stored = await world.load_plan(plan.id)
    assert len(stored.steps) == 2
    assert stored.steps[2].error["message"] == "You want me to fail"


async def test_planning_multi_dependencies(world: World) -> None:
    """execution_plan_test.rb: "execution plan" / "planning algorithm" / "multi dependencies" /
    "constructs the plan of actions to be executed in run phase"."""
    plan = await world.plan(Commit, {"sha": "abc123"})
    await assert_run_flow(
        world,
        """
        Dynflow::Flows::Sequence
          Dynflow::Flows::Concurrence
            3: Ci(pending) {"commit"=>{"sha"=>"abc123"}}
            5: Review(pending) {"commit"=>{"sha"=>"abc123"}, "reviewer"=>"Morfeus", "result"=>true}
            7: Review(pending) {"commit"=>{"sha"=>"abc123"}, "reviewer"=>"Neo", "result"=>true}
          9: Merge(pending) {"commit"=>{"sha"=>"abc123"}, "ci_result"=>Step(3).output[:passed], "review_results"=>[Step(5).output[:passed], Step(7).output[:passed]]}
        """,  # noqa: E501
        plan,
    )


async def test_planning_with_sequence_and_concurrence_keywords(world: World) -> None:
    """execution_plan_test.rb: "execution plan" / "planning algorithm" / "sequence and
    concurrence keyword used" / "constructs the plan of actions to be executed in run phase"."""
    plan = await world.plan(FastCommit, {"sha": "abc123"})
    await assert_run_flow(
        world,
        """
        Dynflow::Flows::Sequence
          Dynflow::Flows::Concurrence
            3: Ci(pending) {"commit"=>{"sha"=>"abc123"}}
            5: Review(pending) {"commit"=>{"sha"=>"abc123"}, "reviewer"=>"Morfeus", "result"=>true}
          7: Merge(pending) {"commit"=>{"sha"=>"abc123"}, "ci_result"=>Step(3).output[:passed], "review_results"=>[Step(5).output[:passed]]}
        """,  # noqa: E501
        plan,
    )


async def test_planning_subscribed_actions(world: World) -> None:
    """execution_plan_test.rb: "execution plan" / "planning algorithm" / "subscribed action" /
    "constructs the plan of actions to be executed in run phase"."""
    plan = await world.plan(DummyTrigger, {})
    await assert_run_flow(
        world,
        """
        Dynflow::Flows::Concurrence
          3: DummySubscribe(pending) {}
          5: DummyMultiSubscribe(pending) {}
        """,
        plan,
    )


async def test_planning_finalize_flow_is_a_sequence(world: World) -> None:
    """execution_plan_test.rb: "execution plan" / "planning algorithm" / "finalize flow" /
    "plans the finalize steps in a sequence"."""
    plan = await world.plan(IncomingIssues, ISSUES_DATA)
    await assert_finalize_flow(
        world,
        """
        Dynflow::Flows::Sequence
          5: Triage(pending) {"author"=>"Peter Smith", "text"=>"Failing test"}
          10: NotifyAssignee(pending) {"triage"=>Step(4).output}
          14: Triage(pending) {"author"=>"John Doe", "text"=>"Internal server error"}
          19: NotifyAssignee(pending) {"triage"=>Step(13).output}
          20: IncomingIssues(pending) {"issues"=>[{"author"=>"Peter Smith", "text"=>"Failing test"}, {"author"=>"John Doe", "text"=>"Internal server error"}]}
        """,  # noqa: E501
        plan,
    )


# ---- cancel ----------------------------------------------------------------------------------


async def _cancel(world: World, force: bool) -> None:
    plan = await world.plan(CancelableSuspended, text="cancel-external")
    finished = await world.execute(plan.id)
    run_step = plan.actions[1].run_step_id

    async def cancellable() -> Any:
        # Ruby's ExecutionPlan#cancellable?: running, with a cancellable step running or
        # suspended.
        stored = await world.load_plan(plan.id)
        return stored.state == "running" and stored.steps[run_step].state in (
            "running",
            "suspended",
        )

    await wait_for(cancellable, TIMEOUT)
    assert await world.cancel(plan.id, force=force) == 1
    done = await asyncio.wait_for(finished, TIMEOUT)
    stored = await world.load_plan(done.id)
    assert (stored.state, stored.result) == ("stopped", "success")
    task = stored.actions[1].output["task"]
    assert task["cancelled"] is True and task["progress"] <= 30


async def test_cancel(world: World) -> None:
    """execution_plan_test.rb: "execution plan" / "#cancel" / "cancels"."""
    await _cancel(world, force=False)


async def test_force_cancel(world: World) -> None:
    """execution_plan_test.rb: "execution plan" / "#cancel" / "force cancels"."""
    await _cancel(world, force=True)


# ---- presentation, errors --------------------------------------------------------------------


async def test_actions_data_accessible_through_steps(world: World) -> None:
    """execution_plan_test.rb: "execution plan" / "accessing actions results" / "provides the
    access to the actions data via steps #action"."""
    plan = await world.plan(IncomingIssues, ISSUES_DATA)
    assert len(plan.steps) == 20
    stored = await world.load_plan(plan.id)
    assert len(stored.steps) == 20
    for step in stored.steps.values():
        action = stored.actions[step.action_id]
        assert action.phase == "present"
        assert step.id in (action.plan_step_id, action.run_step_id, action.finalize_step_id)


class Renamable(Action):
    def run(self) -> None:
        raise RuntimeError("will be renamed")


async def test_step_error_of_a_missing_exception_class_loads(world: World, db_url: str) -> None:
    """execution_plan_test.rb: "execution plan" / "Dynflow::ExecutionPlan::Steps::Error" /
    "doesn't fail when deserializing with missing class"."""
    triggered = await world.trigger(Renamable)
    await triggered.wait(TIMEOUT)
    error = {
        "class": "Dynflow::ExecutionPlan::Steps::Error",
        "exception_class": "RenamedError",
        "message": "This errror is not longer here",
        "backtrace": [],
    }
    await change_rows(
        db_url,
        "UPDATE dynflow_steps SET error = :error WHERE execution_plan_uuid = :id AND id = 2",
        error=json.dumps(error),
        id=triggered.id,
    )
    plan = await world.load_plan(triggered.id)
    assert plan.steps[2].error["exception_class"] == "RenamedError"
    assert plan.steps[2].error["message"] == "This errror is not longer here"
    assert plan.steps[2].to_hash()["error"] == error


# ---- singleton actions -----------------------------------------------------------------------


async def singleton_locks(world: World) -> list[dict[str, Any]]:
    return await world.store.find_records(
        cls=SINGLETON_LOCK, record_id=SingletonAction.singleton_lock_id()
    )


async def test_singleton_unlocks_on_stopped(world: World) -> None:
    """execution_plan_test.rb: "execution plan" / "with singleton actions" / "unlocks the locks
    on transition to stopped"."""
    plan = await world.plan(SingletonAction)
    assert plan.state == "planned"
    assert len(await singleton_locks(world)) == 1
    done = await asyncio.wait_for(await world.execute(plan.id), TIMEOUT)
    assert (done.state, done.result) == ("stopped", "success")
    assert await singleton_locks(world) == []


async def test_singleton_unlocks_on_paused(world: World) -> None:
    """execution_plan_test.rb: "execution plan" / "with singleton actions" / "unlocks the locks
    on transition to paused"."""
    plan = await world.plan(SingletonAction, fail=True)
    assert plan.state == "planned"
    assert len(await singleton_locks(world)) == 1
    done = await asyncio.wait_for(await world.execute(plan.id), TIMEOUT)
    assert (done.state, done.result) == ("paused", "error")
    assert await singleton_locks(world) == []
