"""Conformance: Dynflow's ``test/persistence_test.rb`` ("persistence adapters").

Dynflow's persistence-adapter contract (``it_acts_as_persistence_adapter``, run for the Sequel
adapter) against our ``Store``: the adapter's methods become ours —
``find_execution_plans`` → ``find_plans``, ``find_execution_plan_counts`` → ``count_plans``,
``find_execution_plan_statuses`` → ``plan_statuses``, ``load_execution_plan`` →
``load_plan`` (None instead of ``KeyError``), ``delete_execution_plans(filters)`` →
``find_plans(filters)`` + ``delete_plans(ids)``, ``load_action(s)`` → ``load_actions`` /
``load_plan(...).actions``, ``load_step`` → ``load_plan(...).steps``,
``find_ready_delayed_plans`` → ``delayed.find_ready``, ``chain_execution_plan`` →
``delayed.dependency_stmts``, ``find_execution_plan_dependencies`` → ``delayed.dependencies``,
``save/load/delete_output_chunks`` → ``insert_chunk_stmts`` / ``load_output_chunks`` /
``delete_output_chunks``. Records are written the way the engine writes them (statements
through the writer), from the same data as Dynflow's test (plans ``plan1``..``plan4``: paused,
stopped, paused, paused). Dynflow's records have ``result: nil``; our ``result`` column is
NOT NULL, so they are stored ``pending``.

Not ported:

* "#delete_execution_plans" / "creates backup dir and produce backup including steps and
  actions": we keep no CSV backups of deleted plans (no ``backup_deleted_plans``).
* "#load_action and #save_action" / "allow to retrieve specific attributes using
  #load_actions_attributes": no equivalent; actions are loaded whole.
* "Dynflow::PersistenceAdapters::Sequel" / "allows inspecting the persisted content": the
  Sequel adapter's ``to_hash`` debugging dump.
* "... supports connector's needs for exchaning envelopes", "supports pruning of envelopes of
  invalidated worlds", "supports pruning of orphaned envelopes": no envelopes table; worlds do
  not exchange messages through the database (no Database connector).
* "... supports reading data saved prior to normalization", "support updating data saved
  prior to normalization": Sequel's legacy whole-record ``data`` column and string times of
  pre-normalisation rows; our schema never had them.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from dynflow import Action
from dynflow.execution_plan import ExecutionPlan
from dynflow.persistence.schema import actions, execution_plans, steps
from dynflow.persistence.store import Store
from dynflow.serialization import utcnow
from dynflow.step import PlanStep

PLANS = [
    ("plan1", "test1", "paused"),
    ("plan2", "test2", "stopped"),
    ("plan3", "test3", "paused"),
    ("plan4", "test4", "paused"),
]
ACTION_INPUT = {"key": "value"}
ACTION_OUTPUT = {"something": "else"}


class StoredAction(Action):
    """The class of Dynflow's ``action_data`` (``Dynflow::Action`` there)."""

    def run(self) -> None:
        pass

    def finalize(self) -> None:
        pass


@pytest.fixture
async def store(db_url):
    s = Store(db_url)
    await s.start()
    try:
        yield s
    finally:
        await s.close()


def plan_data(index: int) -> dict[str, Any]:
    """Dynflow's ``prepare_plans``: started 20 s ago (in creation order), ended 10 s ago."""
    plan_id, label, state = PLANS[index]
    now = utcnow()
    return {
        "id": plan_id,
        "label": label,
        "state": state,
        "result": "pending",
        "root_plan_step_id": 1,
        "started_at": now - timedelta(seconds=20) + timedelta(milliseconds=index),
        "ended_at": now - timedelta(seconds=10),
        "real_time": 0.0,
        "execution_time": 0.0,
    }


def new_plan(data: dict[str, Any]) -> ExecutionPlan:
    return ExecutionPlan(
        data["id"],
        state=data["state"],
        label=data["label"],
        result=data["result"],
        root_plan_step_id=data["root_plan_step_id"],
        started_at=data["started_at"],
        ended_at=data["ended_at"],
        real_time=data["real_time"],
        execution_time=data["execution_time"],
    )


def new_action(plan_id: str, output: dict[str, Any] | None = None) -> StoredAction:
    """Dynflow's ``action_data``."""
    return StoredAction(
        world=None,
        execution_plan_id=plan_id,
        id=1,
        plan_step_id=1,
        run_step_id=2,
        finalize_step_id=3,
        caller_execution_plan_id=None,
        caller_action_id=None,
        input=dict(ACTION_INPUT),
        output=dict(output if output is not None else ACTION_OUTPUT),
    )


STEP = {
    "state": "success",
    "real_time": 1.1,
    "execution_time": 0.1,
    "progress_done": 1.0,
    "progress_weight": 2.5,
}


def new_step(plan_id: str) -> PlanStep:
    """Dynflow's ``step_data``: started a minute ago, ended 30 s ago."""
    now = utcnow()
    return PlanStep(
        plan_id,
        1,
        1,
        StoredAction.name(),
        STEP["state"],
        started_at=now - timedelta(seconds=60),
        ended_at=now - timedelta(seconds=30),
        real_time=STEP["real_time"],
        execution_time=STEP["execution_time"],
        progress_done=STEP["progress_done"],
        progress_weight=STEP["progress_weight"],
    )


async def save_plans(
    store: Store, indexes=range(4), *, with_actions: bool = False, with_steps: bool = False
) -> list[dict[str, Any]]:
    saved = []
    for index in indexes:
        data = plan_data(index)
        plan = new_plan(data)
        if with_actions or with_steps:
            plan.actions[1] = new_action(plan.id)
        if with_steps:
            plan.steps[1] = new_step(plan.id)
        assert await store.write(plan.id, store.insert_plan_stmts(plan))
        saved.append(data)
    return saved


async def save_delayed(
    store: Store,
    plan_id: str,
    *,
    start_at: datetime | None = None,
    start_before: datetime | None = None,
    frozen: bool = False,
) -> None:
    stmt = store.delayed.insert_stmt(plan_id, start_at, start_before, "JsonArgs", [], frozen)
    assert await store.write(plan_id, [stmt])


async def chain(store: Store, prerequisite: str, plan_id: str) -> None:
    """Dynflow's ``chain_execution_plan(first, second)``: ``second`` waits for ``first``."""
    assert await store.write(plan_id, store.delayed.dependency_stmts(plan_id, [prerequisite]))


async def ids(store: Store, **options: Any) -> list[str]:
    return [plan.id for plan in await store.find_plans(**options)]


async def rows_of(store: Store, table: Any, plan_id: str) -> int:
    column = table.c.uuid if table is execution_plans else table.c.execution_plan_uuid
    async with store.engine.connect() as conn:
        query = select(func.count()).select_from(table).where(column == plan_id)
        return int((await conn.execute(query)).scalar_one())


def assert_close(loaded: datetime | None, original: datetime) -> None:
    assert loaded is not None
    assert abs((loaded - original).total_seconds()) < 0.5


# ---- "#find_execution_plans" ---------------------------------------------------------------------
async def test_find_execution_plans_supports_pagination(store):
    """persistence_test.rb: "persistence adapters" / "Dynflow::PersistenceAdapters::Sequel" /
    "#find_execution_plans" / "supports pagination"."""
    await save_plans(store)
    assert await ids(store, page=0, per_page=1) == ["plan1"]
    assert await ids(store, page=1, per_page=1) == ["plan2"]


async def test_find_execution_plans_supports_ordering(store):
    """persistence_test.rb: "persistence adapters" / "Dynflow::PersistenceAdapters::Sequel" /
    "#find_execution_plans" / "supports ordering"."""
    await save_plans(store)
    assert await ids(store, order_by="state") == ["plan1", "plan3", "plan4", "plan2"]
    assert await ids(store, order_by="state", desc=True) == ["plan2", "plan1", "plan3", "plan4"]


async def test_find_execution_plans_supports_filtering(store):
    """persistence_test.rb: "persistence adapters" / "Dynflow::PersistenceAdapters::Sequel" /
    "#find_execution_plans" / "supports filtering"."""
    await save_plans(store)
    assert await ids(store, filters={"label": ["test1"]}) == ["plan1"]
    assert await ids(store, filters={"state": ["paused"]}) == ["plan1", "plan3", "plan4"]
    assert await ids(store, filters={"state": ["stopped"]}) == ["plan2"]
    assert await ids(store, filters={"state": []}) == []
    both = ["plan1", "plan2", "plan3", "plan4"]
    assert await ids(store, filters={"state": ["stopped", "paused"]}) == both
    assert await ids(store, filters={"label": ["test1"], "delayed": True}) == []
    now = utcnow()
    await save_delayed(
        store,
        "plan1",
        start_at=now + timedelta(seconds=60),
        start_before=now - timedelta(seconds=60),
    )
    assert await ids(store, filters={"label": ["test1"], "delayed": True}) == ["plan1"]


# ---- "#def find_execution_plan_statuses" ---------------------------------------------------------
async def test_find_execution_plan_statuses_supports_filtering(store):
    """persistence_test.rb: "persistence adapters" / "Dynflow::PersistenceAdapters::Sequel" /
    "#def find_execution_plan_statuses" / "supports filtering"."""
    await save_plans(store)
    paused = {"state": "paused", "result": "pending"}
    stopped = {"state": "stopped", "result": "pending"}
    assert await store.plan_statuses({"label": ["test1"]}) == {"plan1": paused}
    assert await store.plan_statuses({"state": ["paused"]}) == {
        "plan1": paused,
        "plan3": paused,
        "plan4": paused,
    }
    assert await store.plan_statuses({"state": ["stopped"]}) == {"plan2": stopped}
    assert await store.plan_statuses({"state": []}) == {}
    everything = {"plan1": paused, "plan2": stopped, "plan3": paused, "plan4": paused}
    assert await store.plan_statuses({"state": ["stopped", "paused"]}) == everything
    assert await store.plan_statuses({"label": ["test1"], "delayed": True}) == {}


# ---- "#def find_execution_plan_counts" -----------------------------------------------------------
async def test_find_execution_plan_counts_supports_filtering(store):
    """persistence_test.rb: "persistence adapters" / "Dynflow::PersistenceAdapters::Sequel" /
    "#def find_execution_plan_counts" / "supports filtering"."""
    await save_plans(store)
    assert await store.count_plans({"label": ["test1"]}) == 1
    assert await store.count_plans({"state": ["paused"]}) == 3
    assert await store.count_plans({"state": ["stopped"]}) == 1
    assert await store.count_plans({"state": []}) == 0
    assert await store.count_plans({"state": ["stopped", "paused"]}) == 4
    assert await store.count_plans({"label": ["test1"], "delayed": True}) == 0
    now = utcnow()
    await save_delayed(
        store,
        "plan1",
        start_at=now + timedelta(seconds=60),
        start_before=now - timedelta(seconds=60),
    )
    assert await store.count_plans({"label": ["test1"], "delayed": True}) == 1


# ---- "#load_execution_plan and #save_execution_plan" ---------------------------------------------
async def test_load_and_save_execution_plan_serializes_the_plan_data(store):
    """persistence_test.rb: "persistence adapters" / "Dynflow::PersistenceAdapters::Sequel" /
    "#load_execution_plan and #save_execution_plan" / "serializes/deserializes the plan
    data"."""
    assert await store.load_plan("plan1") is None
    original = (await save_plans(store))[0]
    loaded = await store.load_plan("plan1")
    assert loaded is not None
    assert loaded.id == "plan1"
    for key in ("label", "state", "result", "root_plan_step_id", "real_time", "execution_time"):
        assert getattr(loaded, key) == original[key], key
    assert_close(loaded.started_at, original["started_at"])
    assert_close(loaded.ended_at, original["ended_at"])
    assert loaded.to_hash()["class"] == "Dynflow::ExecutionPlan"
    assert await store.delete_plans(["plan1"]) == 1
    assert await store.load_plan("plan1") is None


# ---- "#delete_execution_plans" -------------------------------------------------------------------
async def test_delete_execution_plans_deletes_selected_plans_with_steps_and_actions(store):
    """persistence_test.rb: "persistence adapters" / "Dynflow::PersistenceAdapters::Sequel" /
    "#delete_execution_plans" / "deletes selected execution plans, including steps and
    actions"."""
    await save_plans(store, with_steps=True)
    selected = await ids(store, filters={"uuid": "plan1"})
    assert await store.delete_plans(selected) == 1
    assert await store.load_plan("plan1") is None
    assert await store.load_actions("plan1") == []
    assert await rows_of(store, steps, "plan1") == 0
    assert await rows_of(store, actions, "plan1") == 0
    # no other plan was affected
    other = await store.load_plan("plan2")
    assert other is not None
    assert list(other.actions) == [1] and list(other.steps) == [1]

    await save_plans(store, [0], with_steps=True)
    selected = await ids(store, filters={"state": "paused"})
    assert await store.delete_plans(selected) == 3
    assert await store.load_plan("plan1") is None
    assert await store.load_plan("plan2") is not None
    assert await store.load_plan("plan3") is None


# ---- "#load_action and #save_action" -------------------------------------------------------------
def assert_action_data(action: Action) -> None:
    assert type(action) is StoredAction
    assert action.id == 1
    assert (action.plan_step_id, action.run_step_id, action.finalize_step_id) == (1, 2, 3)
    assert action.caller_execution_plan_id is None and action.caller_action_id is None
    assert action.input == ACTION_INPUT
    assert action.output == ACTION_OUTPUT


async def test_load_and_save_action_serializes_the_action_data(store):
    """persistence_test.rb: "persistence adapters" / "Dynflow::PersistenceAdapters::Sequel" /
    "#load_action and #save_action" / "serializes/deserializes the action data"."""
    await save_plans(store, [1, 2, 3])
    assert await store.load_actions("plan1") == []
    await save_plans(store, [0], with_actions=True)
    plan = await store.load_plan("plan1")
    assert plan is not None
    assert list(plan.actions) == [1]
    assert_action_data(plan.actions[1])
    assert plan.actions[1].to_hash()["class"] == StoredAction.name()
    await store.delete_plans(["plan1"])
    assert await store.load_actions("plan1") == []


async def test_load_actions_in_bulk(store):
    """persistence_test.rb: "persistence adapters" / "Dynflow::PersistenceAdapters::Sequel" /
    "#load_action and #save_action" / "allows to load actions in bulk using #load_actions"."""
    await save_plans(store, [1, 2, 3])
    await save_plans(store, [0], with_actions=True)
    loaded = await store.load_actions("plan1")
    assert len(loaded) == 1
    assert_action_data(loaded[0])


# ---- "#load_step and #save_step" -----------------------------------------------------------------
async def test_load_and_save_step_serializes_the_step_data(store):
    """persistence_test.rb: "persistence adapters" / "Dynflow::PersistenceAdapters::Sequel" /
    "#load_step and #save_step" / "serializes/deserializes the step data"."""
    await save_plans(store, [1, 2, 3], with_actions=True)
    original = new_step("plan1")
    plan = new_plan(plan_data(0))
    plan.actions[1] = new_action("plan1")
    plan.steps[1] = original
    assert await store.write(plan.id, store.insert_plan_stmts(plan))
    loaded = (await store.load_plan("plan1")).steps[1]
    assert (loaded.id, loaded.action_id) == (1, 1)
    for key, value in STEP.items():
        assert getattr(loaded, key) == value, key
    assert_close(loaded.started_at, original.started_at)
    assert_close(loaded.ended_at, original.ended_at)


# ---- "#find_ready_delayed_plans" -----------------------------------------------------------------
async def ready(store: Store, now: datetime) -> list[str]:
    return [row["execution_plan_id"] for row in await store.delayed.find_ready(now)]


async def test_find_ready_delayed_plans_finds_plans_with_start_before_in_past(store):
    """persistence_test.rb: "persistence adapters" / "Dynflow::PersistenceAdapters::Sequel" /
    "#find_ready_delayed_plans" / "finds plans with start_before in past"."""
    start = utcnow()
    minute = timedelta(seconds=60)
    await save_plans(store)
    await save_delayed(store, "plan1", start_at=start + minute, start_before=start - minute)
    await save_delayed(store, "plan2", start_at=start - minute)
    await save_delayed(store, "plan3", start_at=start + minute)
    await save_delayed(store, "plan4", start_at=start - minute, start_before=start - minute)
    assert await ready(store, start) == ["plan2", "plan4", "plan1"]


async def test_find_ready_delayed_plans_does_not_find_plans_that_are_frozen(store):
    """persistence_test.rb: "persistence adapters" / "Dynflow::PersistenceAdapters::Sequel" /
    "#find_ready_delayed_plans" / "does not find plans that are frozen"."""
    start = utcnow()
    minute = timedelta(seconds=60)
    await save_plans(store)
    await save_delayed(store, "plan1", start_at=start + minute, start_before=start - minute)
    await save_delayed(
        store, "plan2", start_at=start + minute, start_before=start - minute, frozen=True
    )
    assert await ready(store, start) == ["plan1"]


async def test_find_ready_delayed_plans_finds_plans_with_null_start_at(store):
    """persistence_test.rb: "persistence adapters" / "Dynflow::PersistenceAdapters::Sequel" /
    "#find_ready_delayed_plans" / "finds plans with null start_at"."""
    start = utcnow()
    await save_plans(store)
    await save_delayed(store, "plan1")
    assert await ready(store, start) == ["plan1"]


async def test_properly_stored_execution_plan_dependencies(store):
    """persistence_test.rb: "persistence adapters" / "Dynflow::PersistenceAdapters::Sequel" /
    "#find_ready_delayed_plans" / "properly stored execution plan dependencies"."""
    await save_plans(store)
    await save_delayed(store, "plan1")
    await chain(store, "plan2", "plan1")
    await chain(store, "plan3", "plan1")
    assert set(await store.delayed.dependencies("plan1")) == {"plan2", "plan3"}
    assert await store.delayed.blocked_plans("plan2") == ["plan1"]


async def test_find_ready_delayed_plans_does_not_find_blocked_plans(store):
    """persistence_test.rb: "persistence adapters" / "Dynflow::PersistenceAdapters::Sequel" /
    "#find_ready_delayed_plans" / "does not find blocked plans"."""
    start = utcnow()
    await save_plans(store)
    await save_delayed(store, "plan1")
    await chain(store, "plan2", "plan1")
    await chain(store, "plan3", "plan1")  # plan3 is paused: not finished
    assert await ready(store, start) == []


async def test_find_ready_delayed_plans_finds_plans_which_are_no_longer_blocked(store):
    """persistence_test.rb: "persistence adapters" / "Dynflow::PersistenceAdapters::Sequel" /
    "#find_ready_delayed_plans" / "finds plans which are no longer blocked"."""
    start = utcnow()
    await save_plans(store)
    await save_delayed(store, "plan1")
    await chain(store, "plan2", "plan1")  # plan2 is stopped
    assert await ready(store, start) == ["plan1"]


async def test_find_ready_delayed_plans_does_not_find_unblocked_but_frozen_plans(store):
    """persistence_test.rb: "persistence adapters" / "Dynflow::PersistenceAdapters::Sequel" /
    "#find_ready_delayed_plans" / "does not find plans which are no longer blocked but are
    frozen"."""
    start = utcnow()
    await save_plans(store)
    await save_delayed(store, "plan1", frozen=True)
    await chain(store, "plan2", "plan1")
    assert await ready(store, start) == []


async def test_find_ready_delayed_plans_does_not_find_unblocked_plans_starting_later(store):
    """persistence_test.rb: "persistence adapters" / "Dynflow::PersistenceAdapters::Sequel" /
    "#find_ready_delayed_plans" / "does not find plans which are no longer blocked but their
    start_at is in the future"."""
    start = utcnow()
    await save_plans(store)
    await save_delayed(store, "plan1", start_at=start + timedelta(seconds=60))
    await chain(store, "plan2", "plan1")  # plan2 is already stopped
    assert await ready(store, start) == []


# ---- "#delete_output_chunks" ---------------------------------------------------------------------
async def test_delete_output_chunks(store):
    """persistence_test.rb: "persistence adapters" / "Dynflow::PersistenceAdapters::Sequel" /
    "#delete_output_chunks" / "deletes output chunks"."""
    await save_plans(store, with_actions=True)
    now = time.time()
    chunks = [{"chunk": "Hello", "timestamp": now}, {"chunk": "Bye", "timestamp": now}]
    assert await store.write("plan1", store.insert_chunk_stmts("plan1", 1, chunks))
    assert [c["chunk"] for c in await store.load_output_chunks("plan1", 1)] == ["Hello", "Bye"]
    deleted = await store.delete_output_chunks("plan1", 1)
    assert await store.load_output_chunks("plan1", 1) == []
    assert deleted == 2


# ---- Sequel-specific, applicable ----------------------------------------------------------------
async def test_does_not_leak_driver_blobs(store):
    """persistence_test.rb: "persistence adapters" / "Dynflow::PersistenceAdapters::Sequel" /
    "does not leak Sequel blobs".

    A long value of a stored output comes back as a plain ``str`` (not a driver object)."""
    value = "a" * 1000
    plan = new_plan(plan_data(0))
    plan.actions[1] = new_action("plan1", output={"key": value})
    assert await store.write(plan.id, store.insert_plan_stmts(plan))
    (loaded,) = await store.load_actions("plan1")
    assert type(loaded.output["key"]) is str
    assert loaded.output["key"] == value
