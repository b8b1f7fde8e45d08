"""A plan whose stored data cannot be decoded (edited by hand, written by another version):
listed from its plain columns, a clear error where it is opened, never a crash at start-up.
Its rows are left as they are."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from dynflow import Action, World
from dynflow.errors import PlanUnreadable
from dynflow.executor import EXECUTION_LOCK
from dynflow.persistence.schema import coordinator_records
from smart_proxy_dynflow.console import ConsoleAccess
from tests.support.services import core_service, make_config, run_script


class Hello(Action):
    def run(self) -> None:
        self.output["hello"] = "world"


async def corrupt(db_url: str, sql: str, **params: object) -> None:
    engine = create_async_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(sql), params)
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("table", "column", "part"),
    [
        ("dynflow_execution_plans", "execution_history", "its plan row"),
        ("dynflow_steps", "error", "its step"),
        ("dynflow_actions", "input", "its action"),
    ],
)
async def test_listed_from_its_row_and_a_clear_error_when_loaded(
    db_url: str, table: str, column: str, part: str
) -> None:
    async with World(db_url, cleaner_interval=None, auto_execute=False) as world:
        good = await world.trigger(Hello)
        bad = await world.trigger(Hello)
        await good.wait(5)
        await bad.wait(5)
        key = "uuid" if table == "dynflow_execution_plans" else "execution_plan_uuid"
        await corrupt(
            db_url, f"UPDATE {table} SET {column} = '{{oops' WHERE {key} = :id", id=bad.id
        )

        listed = {plan.id: plan for plan in await world.find_plans()}
        assert listed[good.id].unreadable is None
        if part == "its plan row":
            assert listed[bad.id].state == "stopped" and listed[bad.id].result == "success"
            assert "cannot be read: its plan row" in (listed[bad.id].unreadable or "")
        with pytest.raises(PlanUnreadable, match=f"execution plan {bad.id} cannot be read: {part}"):
            await world.load_plan(bad.id)
        assert (await world.load_plan(good.id)).actions[1].output == {"hello": "world"}


async def test_a_dead_worlds_unreadable_plan_does_not_stop_the_start(db_url: str) -> None:
    async with World(db_url, cleaner_interval=None, auto_execute=False) as world:
        plan = await world.trigger(Hello)
        await plan.wait(5)
    # As if a world died while running it: running, with its execution lock held by a world
    # that has no record any more; and its flow unreadable.
    dead_world = str(uuid.uuid4())
    await corrupt(
        db_url,
        "UPDATE dynflow_execution_plans SET state = 'running', run_flow = '[\"X\"' "
        "WHERE uuid = :id",
        id=plan.id,
    )
    await corrupt(
        db_url,
        f"INSERT INTO {coordinator_records.name} (id, class, owner_id, data) "
        "VALUES (:id, :cls, :owner, :data)",
        id=f"execution-plan:{plan.id}",
        cls=EXECUTION_LOCK,
        owner=dead_world,
        data=f'{{"world_id": "{dead_world}", "execution_plan_id": "{plan.id}"}}',
    )
    async with World(db_url, cleaner_interval=None) as world:
        locks = await world.store.find_records(cls=EXECUTION_LOCK)
        assert locks == []  # released: the next start does not try again
        with pytest.raises(PlanUnreadable):
            await world.load_plan(plan.id)
        # The rows are kept for an admin to look at.
        assert [p.state for p in await world.find_plans()] == ["running"]


async def test_the_task_api_and_the_console_answer_409(tmp_path: Path) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    config = make_config(db_url)
    async with core_service(config, console=ConsoleAccess(console_http=True)) as svc:
        answer = await svc.client.post("/tasks/launch", json=run_script({"script": "true"}))
        task_id = answer.json()["task_id"]
        plan = await svc.world.load_plan(task_id)
        while plan is None or plan.state != "stopped":
            plan = await svc.world.load_plan(task_id)
        await corrupt(
            db_url,
            "UPDATE dynflow_actions SET output = '{oops' WHERE execution_plan_uuid = :id",
            id=task_id,
        )
        status = await svc.client.get(f"/tasks/{task_id}/status")
        assert status.status_code == 409
        assert f"execution plan {task_id} cannot be read: its action" in status.json()["error"]
        cancel = await svc.client.post(f"/tasks/{task_id}/cancel")
        assert cancel.status_code == 409 and "cannot be read" in cancel.json()["error"]
        bulk = await svc.client.post("/tasks/status", json={"task_ids": [task_id]})
        assert bulk.status_code == 200 and bulk.json()[task_id]["state"] == "stopped"
        listed = await svc.client.get("/console")
        assert listed.status_code == 200 and task_id[:8] in listed.text
        page = await svc.client.get(f"/console/{task_id}")
        assert page.status_code == 409 and "Plan cannot be read" in page.text
