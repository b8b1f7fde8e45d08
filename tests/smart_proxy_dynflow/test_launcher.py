"""Launchers (cases 80-83, 95 of §9.1) and the group launch with its bulk callback (§3.5)."""

from __future__ import annotations

import uuid
from typing import Any

from smart_proxy_dynflow.launcher import BatchLauncher, SingleLauncher
from tests.support.local_command import HelloWorld
from tests.support.services import core_service, make_config
from tests.support.waiting import wait_for, wait_plan_state


async def test_single_plans_the_action_with_the_callback_host(db_url, foreman):
    async with core_service(make_config(db_url, foreman.url)) as svc:
        launcher = SingleLauncher(svc.core, "https://proxy:9090", {}, operation="single")
        result = await launcher.launch(
            {"action_class": "Test::HelloWorld", "action_input": {"a": 1}}
        )
        assert result["result"] == "success"
        plan = await wait_plan_state(svc.world, result["task_id"])
        assert plan.result == "success"
        assert isinstance(plan.actions[1], HelloWorld)
        assert plan.actions[1].input == {"a": 1, "callback_host": "https://proxy:9090"}


async def test_batch_parent_spawns_children_with_the_keys_as_ids(db_url, foreman):
    async with core_service(make_config(db_url, foreman.url)) as svc:
        launcher = BatchLauncher(svc.core, "http://proxy", {}, operation="local-batch")
        keys = [str(uuid.uuid4()) for _ in range(2)]
        inputs = {
            k: {"action_class": "Test::HelloWorld", "action_input": {"n": i}}
            for i, k in enumerate(keys)
        }
        result = await launcher.launch(inputs)
        assert list(result) == ["parent"] and result["parent"]["result"] == "success"
        parent = await wait_plan_state(svc.world, result["parent"]["task_id"])
        assert parent.result == "success"
        assert parent.actions[1].output == {
            "total_count": 2, "success_count": 2, "failed_count": 0, "pending_count": 0
        }
        children = await svc.world.sub_plans(parent.id)
        assert sorted(c.id for c in children) == sorted(keys)
        for i, key in enumerate(keys):
            child = await wait_plan_state(svc.world, key)
            assert child.actions[1].input == {"n": i, "callback_host": "http://proxy"}


async def test_group_launch_one_runner_and_one_bulk_callback(db_url, foreman):
    async with core_service(make_config(db_url, foreman.url)) as svc:
        keys = [str(uuid.uuid4()) for _ in range(3)]
        hosts = ["web1", "fail", "web3"]
        inputs = {
            key: {
                "action_class": "Proxy::Ansible::RunPlaybook",  # ignored: collectors run
                "action_input": {
                    "hostname": host,
                    "callback": {"task_id": f"foreman-{host}", "step_id": 3},
                },
            }
            for key, host in zip(keys, hosts, strict=True)
        }
        svc.core.actions.register(HelloWorld, "Proxy::Ansible::RunPlaybook")
        response = await svc.client.post(
            "/tasks/launch", json={"operation": "local-group", "input": inputs}
        )
        assert response.status_code == 200, response.text
        parent_id = response.json()["parent"]["task_id"]
        parent = await wait_plan_state(svc.world, parent_id)
        assert parent.result == "success"
        outputs: dict[str, Any] = {}
        for key, host in zip(keys, hosts, strict=True):
            child = await wait_plan_state(svc.world, key)
            status = (await svc.client.get(f"/tasks/{key}/status")).json()
            collector = status["actions"][0]
            assert collector["input"]["task_id"] == f"foreman-{host}"
            assert collector["output"]["result"][0]["output"] == f"hello {host}\n"
            assert collector["output"]["exit_status"] == (1 if host == "fail" else 0)
            assert child.result == ("error" if host == "fail" else "success")
            outputs[key] = collector["output"]
        # Every collector shares the one runner.
        assert len({o["runner_id"] for o in outputs.values()}) == 1
        await wait_for(lambda: _value(foreman.callbacks))
        assert len(foreman.callbacks) == 1
        bulk = foreman.callbacks[0]["callbacks"]
        assert [c["callback"]["task_id"] for c in bulk] == [f"foreman-{h}" for h in hosts]
        for entry, key in zip(bulk, keys, strict=True):
            assert entry["data"]["exit_status"] == outputs[key]["exit_status"]
            assert entry["data"]["result"] == outputs[key]["result"]


async def _value(value: Any) -> Any:
    return value
