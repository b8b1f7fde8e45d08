"""What a real Foreman sends and needs (issue 13), over TCP only.

Each item is checked against the in-process core (deterministic cases) and against the shipped
``smart-proxy`` / ``smart-proxy-dynflow-core`` processes (``tests/reliability/harness.py``:
simulated hosts, a recording Foreman that answers 500 where foreman-tasks would):

* A task whose runner has not started yet: ``output.result`` is a list in every status answer
  (REX iterates it; ``{}`` shows "Error loading data from proxy").
* Foreman's safety-net poll sends ``null`` ids (tasks without a parent): answered 200.
* A launch Foreman sends again after its read timeout is answered as launched; each host runs
  once; a key that exists with another action is still 409.
* A bulk (group) callback never has ``data: null`` (foreman-tasks answers 500 to all of it).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability import harness
from tests.reliability.harness import Foreman, Service
from tests.support.local_command import RUN_SCRIPT_NAMES
from tests.support.services import CoreService, core_service, make_config
from tests.support.waiting import wait_for, wait_plan_state

RUN_SCRIPT = RUN_SCRIPT_NAMES[0]
ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIST = ROOT / "tests" / "support" / "plugin_dist"


def foreman_output(status: dict[str, Any], foreman_task_id: str) -> dict[str, Any]:
    """The output Foreman reads from a task status: that of the first action whose
    ``input.task_id`` is its task id (foreman-tasks ``ProxyAction#get_proxy_data``)."""
    for action in status["actions"]:
        if (action.get("input") or {}).get("task_id") == foreman_task_id:
            return action.get("output") or {}
    raise AssertionError(f"no action of {status['id']} has task_id {foreman_task_id}")


def job(script: str, foreman_task_id: str | None) -> dict[str, Any]:
    action_input: dict[str, Any] = {"script": script}
    if foreman_task_id is not None:
        action_input["callback"] = {"task_id": foreman_task_id, "step_id": 3}
    return {"action_class": RUN_SCRIPT, "action_input": action_input}


def delivered_once(foreman: Foreman, task_ids: list[str]) -> bool:
    delivered = foreman.delivered()
    return all(len(delivered.get(t, ())) == 1 for t in task_ids)


@pytest.fixture
async def rails() -> AsyncIterator[Foreman]:
    foreman = Foreman()
    await foreman.start()
    try:
        yield foreman
    finally:
        await foreman.stop()


@pytest.fixture
async def service(tmp_path: Path, rails: Foreman) -> AsyncIterator[CoreService]:
    config = make_config(f"sqlite+aiosqlite:///{tmp_path / 'dynflow.sqlite'}", rails.url)
    async with core_service(config) as svc:
        yield svc


async def _true(value: Any) -> Any:
    return value


# ---- 4: the output of a task whose runner has not started -----------------------------------
async def test_a_task_not_started_yet_shows_an_empty_result_list(service):
    key = str(uuid.uuid4())
    action_class = service.core.actions.lookup(RUN_SCRIPT)
    # Planned and stored, not run: what a status read finds between a child's planning and
    # its run step (common right after a large batch).
    await service.world.plan_with_options(
        action_class, args=(job("true", "foreman-1")["action_input"],), id=key
    )
    single = await service.client.get(f"/tasks/{key}/status")
    assert single.status_code == 200
    assert single.json()["state"] == "planned"
    assert foreman_output(single.json(), "foreman-1") == {"result": []}
    many = await service.client.post("/tasks/statuses", json={"task_ids": [key]})
    assert many.status_code == 200
    assert foreman_output(many.json()[key], "foreman-1") == {"result": []}


# ---- 6: Foreman's safety-net poll -------------------------------------------------------------
async def test_the_safety_net_poll_with_null_ids_is_answered(service):
    response = await service.client.post(
        "/tasks", json={"action_name": "Test::HelloWorld", "action_input": {}}
    )
    key = response.json()["task_id"]
    await wait_plan_state(service.world, key)
    # (remote_task_ids + parent_task_ids).uniq: null for every task without a parent.
    ids = [key, str(uuid.uuid4()), None]
    poll = await service.client.post("/tasks/status", json={"task_ids": ids})
    assert poll.status_code == 200, poll.text
    assert poll.json() == {key: {"state": "stopped", "result": "success"}}
    full = await service.client.post("/tasks/statuses", json={"task_ids": [None, key, 7]})
    assert full.status_code == 200, full.text
    assert list(full.json()) == [key]
    only_nulls = await service.client.post("/tasks/status", json={"task_ids": [None]})
    assert (only_nulls.status_code, only_nulls.json()) == (200, {})
    # What Foreman never sends stays an error.
    assert (await service.client.post("/tasks/status", json={"task_ids": "x"})).status_code == 422
    assert (await service.client.post("/tasks/status", json=[key])).status_code == 400


# ---- 8: a launch sent again --------------------------------------------------------------------
async def test_a_resent_batch_launch_is_answered_as_launched_and_runs_once(service, rails):
    keys = [str(uuid.uuid4()) for _ in range(3)]
    body = {
        "operation": "local-batch",
        "input": {k: job(f"echo {i}", f"foreman-{k}") for i, k in enumerate(keys)},
        "options": {},
    }
    first = await service.client.post("/tasks/launch", json=body)
    assert first.status_code == 200, first.text
    parent = first.json()["parent"]["task_id"]
    await wait_for(lambda: _true(delivered_once(rails, [f"foreman-{k}" for k in keys])))
    count = await service.world.count_plans()

    again = await service.client.post("/tasks/launch", json=body)
    assert again.status_code == 200, again.text
    assert again.json() == {"parent": {"result": "success", "task_id": parent}}
    assert await service.world.count_plans() == count

    # Some sent before, one new: only the new one is planned.
    new = str(uuid.uuid4())
    body["input"][new] = job("echo new", f"foreman-{new}")
    mixed = await service.client.post("/tasks/launch", json=body)
    assert mixed.status_code == 200, mixed.text
    second_parent = mixed.json()["parent"]["task_id"]
    assert second_parent != parent
    plan = await wait_plan_state(service.world, second_parent)
    assert plan.actions[1].to_hash()["output"]["total_count"] == 1
    await wait_plan_state(service.world, new)
    all_ids = [f"foreman-{k}" for k in [*keys, new]]
    await wait_for(lambda: _true(delivered_once(rails, all_ids)))
    assert await service.world.count_plans() == count + 2
    assert rails.malformed == []


async def test_a_key_launched_with_another_action_is_a_conflict(service):
    key = str(uuid.uuid4())
    body = {"operation": "local-batch", "input": {key: job("true", "foreman-x")}}
    assert (await service.client.post("/tasks/launch", json=body)).status_code == 200
    await wait_plan_state(service.world, key)
    count = await service.world.count_plans()
    body["input"][key]["action_class"] = "Test::HelloWorld"
    conflict = await service.client.post("/tasks/launch", json=body)
    assert conflict.status_code == 409
    assert key in conflict.json()["error"]
    # A group's task is another action (an output collector) than a batch's.
    group = {"operation": "local-group", "input": {key: job("true", "foreman-x")}}
    assert (await service.client.post("/tasks/launch", json=group)).status_code == 409
    assert await service.world.count_plans() == count


async def test_the_same_launch_twice_at_once_runs_each_host_once(service, rails):
    keys = [str(uuid.uuid4()) for _ in range(4)]
    body = {
        "operation": "local-batch",
        "input": {k: job("echo hi", f"foreman-{k}") for k in keys},
    }
    answers = await asyncio.gather(
        *(service.client.post("/tasks/launch", json=body) for _ in range(2))
    )
    assert [a.status_code for a in answers] == [200, 200]
    parents = {a.json()["parent"]["task_id"] for a in answers}
    for parent in parents:
        await wait_plan_state(service.world, parent)
    await wait_for(lambda: _true(delivered_once(rails, [f"foreman-{k}" for k in keys])))
    await asyncio.sleep(0.5)  # nothing else may come
    assert delivered_once(rails, [f"foreman-{k}" for k in keys])
    assert await service.world.count_plans() == len(parents) + len(keys)


# ---- 9: bulk callbacks -------------------------------------------------------------------------
async def test_a_group_whose_parent_failed_calls_foreman_back_without_null_data(service, rails):
    keys = [str(uuid.uuid4()) for _ in range(3)]
    inputs = {k: job("true", f"foreman-{k}") for k in keys}
    inputs[keys[2]] = job("true", None)  # no callback: no entry at all
    response = await service.client.post(
        "/tasks/launch",
        json={"operation": "local-group", "input": inputs, "options": {"fail_parent": True}},
    )
    assert response.status_code == 200, response.text
    await wait_for(lambda: _true(delivered_once(rails, [f"foreman-{k}" for k in keys[:2]])))
    assert rails.malformed == []
    records = [r for r in rails.records if r.status == 200]
    assert sorted(r.task_id for r in records) == sorted(f"foreman-{k}" for k in keys[:2])
    for record in records:
        assert record.data["exit_status"] == "EXCEPTION"
        assert [r["output_type"] for r in record.data["result"]] == ["debug"]
        assert "no result" in record.data["result"][0]["output"]


# ---- the shipped processes ---------------------------------------------------------------------
def shipped(tmp_path: Path, kind: str, foreman: Foreman, lines: int = 1) -> Service:
    output = tmp_path / "simulated-output.txt"
    output.write_text("".join(f"line {i}\n" for i in range(lines)))
    service = Service(
        tmp_path,
        kind,
        str(tmp_path / "dynflow.sqlite"),
        foreman.url,
        env={
            "REX_SIMULATE": "1",
            "REX_SIMULATE_PATH": str(output),
            "PYTHONPATH": os.pathsep.join(
                filter(None, [os.environ.get("PYTHONPATH"), str(PLUGIN_DIST), str(ROOT)])
            ),
        },
        dynflow={
            "runner_refresh_interval": 0.2,
            "callback_retry_interval": 0.2,
            "callback_retry_max_interval": 1.0,
        },
        rex={"runner_refresh_interval": 0.2},
    )
    if kind == "core":  # the test operations (local-group) of the local_command plugin
        (service.config_dir / "settings.d" / "local_command.yml").write_text(
            "---\n:enabled: true\n"
        )
    return service


async def test_shipped_proxy_during_a_large_batch(tmp_path, rails):
    """Status reads and the safety-net poll while a batch of 200 simulated hosts starts: every
    answer is 200 and every task's output has a ``result`` list."""
    service = shipped(tmp_path, "proxy", rails, lines=2)
    try:
        await service.start()
        keys = [str(uuid.uuid4()) for _ in range(200)]
        jobs = {k: harness.simulated_job(k) for k in keys}
        foreman_ids = [harness.foreman_task(k) for k in keys]
        reads = {"answers": 0, "not_started": 0}
        async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:

            async def read_statuses() -> None:
                while not delivered_once(rails, foreman_ids):
                    poll = await client.post(
                        "/dynflow/tasks/status", json={"task_ids": [*keys, None]}
                    )
                    assert poll.status_code == 200, poll.text
                    full = await client.post(
                        "/dynflow/tasks/statuses", json={"task_ids": [*keys[-50:], None]}
                    )
                    assert full.status_code == 200, full.text
                    for key, status in full.json().items():
                        output = foreman_output(status, harness.foreman_task(key))
                        assert isinstance(output.get("result"), list), (key, output)
                        reads["answers"] += 1
                        reads["not_started"] += "runner_id" not in output
                    await asyncio.sleep(0.05)

            reader = asyncio.create_task(read_statuses())
            await asyncio.sleep(0.1)
            launch = await client.post(
                "/dynflow/tasks/launch", json={"operation": "ssh", "input": jobs, "options": {}}
            )
            assert launch.status_code == 200, launch.text
            await asyncio.wait_for(reader, 120)
        assert reads["answers"] > 0
        assert rails.malformed == []
        assert service.tracebacks() == 0, service.tail(40)
    finally:
        service.close()


async def test_shipped_proxy_runs_a_resent_launch_once(tmp_path, rails):
    service = shipped(tmp_path, "proxy", rails, lines=3)
    try:
        await service.start()
        keys = [str(uuid.uuid4()) for _ in range(20)]
        body = {
            "operation": "ssh",
            "input": {k: harness.simulated_job(k) for k in keys},
            "options": {},
        }
        foreman_ids = [harness.foreman_task(k) for k in keys]
        async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:
            first = await client.post("/dynflow/tasks/launch", json=body)
            again = await client.post("/dynflow/tasks/launch", json=body)  # the retry
            assert (first.status_code, again.status_code) == (200, 200), again.text
            parents = {first.json()["parent"]["task_id"], again.json()["parent"]["task_id"]}
            assert await harness.wait_until(
                lambda: _true(delivered_once(rails, foreman_ids)), 60
            ), rails.delivered()
            count = (await client.get("/dynflow/tasks/count")).json()["count"]
            late = await client.post("/dynflow/tasks/launch", json=body)
            assert late.status_code == 200, late.text
            assert late.json()["parent"]["result"] == "success"
            assert late.json()["parent"]["task_id"] in parents
            assert (await client.get("/dynflow/tasks/count")).json()["count"] == count
            await asyncio.sleep(1.0)  # a second run would call back within this
        assert delivered_once(rails, foreman_ids), rails.delivered()
        assert service.tracebacks() == 0, service.tail(40)
    finally:
        service.close()


async def test_shipped_core_group_callbacks_never_carry_null_data(tmp_path, rails):
    service = shipped(tmp_path, "core", rails)
    try:
        await service.start()
        async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:
            assert "local-group" in (await client.get("/tasks/operations")).json()
            ok_keys = [str(uuid.uuid4()) for _ in range(2)]
            ok = {"operation": "local-group", "input": {k: job("x", f"ok-{k}") for k in ok_keys}}
            assert (await client.post("/tasks/launch", json=ok)).status_code == 200
            failed_keys = [str(uuid.uuid4()) for _ in range(2)]
            failed = {
                "operation": "local-group",
                "input": {k: job("x", f"failed-{k}") for k in failed_keys},
                "options": {"fail_parent": True},
            }
            assert (await client.post("/tasks/launch", json=failed)).status_code == 200
            everyone = [f"ok-{k}" for k in ok_keys] + [f"failed-{k}" for k in failed_keys]
            assert await harness.wait_until(lambda: _true(delivered_once(rails, everyone)), 30), (
                rails.malformed,
                service.tail(40),
            )
            # Sent again after the end: answered as launched, no second bulk callback.
            again = await client.post("/tasks/launch", json=ok)
            assert again.status_code == 200, again.text
            await asyncio.sleep(1.0)
        assert rails.malformed == []
        delivered = rails.delivered()
        for key in ok_keys:
            (record,) = delivered[f"ok-{key}"]
            assert record.data["exit_status"] == 0
            assert record.data["result"][0]["output"] == "hello ?\n"
        for key in failed_keys:
            (record,) = delivered[f"failed-{key}"]
            assert record.data["exit_status"] == "EXCEPTION"
            assert record.data["result"][0]["output_type"] == "debug"
    finally:
        service.close()


async def test_shipped_proxy_takes_a_batch_of_100_hosts_with_a_big_script(tmp_path, rails):
    """Foreman's batch of 100 hosts carries the script 100 times: a 400 KB script makes a
    launch of about 40 MB, over the old 16 MiB cap (413 for the whole batch); the default
    ``max_body_size`` is 256 MiB."""
    service = shipped(tmp_path, "proxy", rails)
    try:
        await service.start()
        script = "#!/bin/sh\n" + "# a long script line of the admin's job template\n" * 8_000
        keys = [str(uuid.uuid4()) for _ in range(100)]
        jobs = {k: harness.simulated_job(k) for k in keys}
        for entry in jobs.values():
            entry["action_input"]["script"] = script
        body = {"operation": "ssh", "input": jobs, "options": {}}
        async with httpx.AsyncClient(base_url=service.url, timeout=120) as client:
            launch = await client.post("/dynflow/tasks/launch", json=body)
            assert launch.status_code == 200, launch.text[:300]
        assert len(launch.request.content) > 16 * 1024 * 1024
        foreman_ids = [harness.foreman_task(k) for k in keys]
        assert await harness.wait_until(
            lambda: _true(delivered_once(rails, foreman_ids)), 120
        ), rails.delivered()
        assert service.tracebacks() == 0, service.tail(40)
    finally:
        service.close()
