"""Launchers (cases 80-83, 95 of §9.1) and the group launch with its bulk callback (§3.5)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from smart_proxy_dynflow.launcher import BatchLauncher, SingleLauncher
from smart_proxy_dynflow.secret_box import SecretBox, is_sealed
from tests.support.local_command import RUN_SCRIPT_NAMES, HelloWorld, register_test_actions
from tests.support.services import core_service, make_config
from tests.support.waiting import wait_for, wait_plan_state, wait_step_state


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


# ---- secrets at rest ----------------------------------------------------------------------------
PASSWORD = "MARKER-launch-password-51c2"


def register_with_box(core: Any) -> None:
    register_test_actions(core)
    core.secret_box = SecretBox.generate()


def secret_input(**values: Any) -> dict[str, Any]:
    return {
        "secrets": {"ssh_password": PASSWORD, "key_passphrase": None},
        "callback": {"task_id": f"foreman-{uuid.uuid4()}", "step_id": 3},
        **values,
    }


async def stored_inputs(world: Any, *plan_ids: str) -> dict[str, Any]:
    """Every action's stored input of these plans, by ``<plan>/<action>``."""
    inputs: dict[str, Any] = {}
    for plan_id in plan_ids:
        plan = await world.load_plan(plan_id)
        assert plan is not None
        for action in plan.actions.values():
            inputs[f"{plan_id}/{action.id}"] = action.to_hash()["input"]
    return inputs


def assert_not_in_the_database(db_url: str, *markers: str) -> None:
    if db_url.startswith("sqlite"):
        database = Path(db_url.split(":///", 1)[1])
        for path in database.parent.glob(database.name + "*"):
            data = path.read_bytes()
            for marker in markers:
                assert marker.encode() not in data, path


async def test_batch_launch_stores_secrets_sealed_until_the_runner_finished(
    db_url, foreman, tmp_path
):
    """The parent (every task's input) and the child hold the password sealed; the parent
    forgets it once the child is planned, the child once its exit status is stored."""
    release = tmp_path / "release"
    script = f"while [ ! -e {release} ]; do sleep 0.02; done; echo done"
    async with core_service(make_config(db_url, foreman.url), register=register_with_box) as svc:
        box = svc.core.secret_box
        key = str(uuid.uuid4())
        entry = {"action_class": RUN_SCRIPT_NAMES[0], "action_input": secret_input(script=script)}
        inputs = {key: entry}
        response = await svc.client.post(
            "/tasks/launch", json={"operation": "local-batch", "input": inputs}
        )
        assert response.status_code == 200, response.text
        parent_id = response.json()["parent"]["task_id"]
        parent = await wait_plan_state(svc.world, parent_id)
        entry = parent.actions[1].input["input_hash"][key]["action_input"]
        assert entry["secrets"] == {"ssh_password": None, "key_passphrase": None}

        async def running() -> Any:
            plan = await svc.world.load_plan(key)
            return plan if plan is not None and "runner_id" in plan.actions[1].output else None

        plan = await wait_for(running)
        sealed = plan.actions[1].input["secrets"]["ssh_password"]
        assert is_sealed(sealed) and box.open("ssh_password", sealed) == PASSWORD
        assert PASSWORD not in json.dumps(await stored_inputs(svc.world, parent_id, key))
        assert_not_in_the_database(db_url, PASSWORD)
        status = (await svc.client.get(f"/tasks/{key}/status")).text
        assert PASSWORD not in status and sealed not in status

        release.touch()
        plan = await wait_plan_state(svc.world, key)
        assert plan.actions[1].output["exit_status"] == 0
        assert plan.actions[1].input["secrets"] == {"ssh_password": None, "key_passphrase": None}
        stored = json.dumps(await stored_inputs(svc.world, parent_id, key))
        assert PASSWORD not in stored and "sealed:" not in stored
        assert_not_in_the_database(db_url, PASSWORD)
        await wait_for(lambda: _value(foreman.callbacks))


async def test_single_launch_seals_the_secrets(db_url, foreman):
    async with core_service(make_config(db_url, foreman.url), register=register_with_box) as svc:
        launcher = SingleLauncher(svc.core, "https://proxy:9090", {}, operation="single")
        result = await launcher.launch(
            {"action_class": "Test::WaitForEvent", "action_input": secret_input()}
        )
        plan = await wait_step_state(svc.world, result["task_id"], 2, "suspended")
        sealed = plan.actions[1].input["secrets"]["ssh_password"]
        assert is_sealed(sealed)
        assert svc.core.secret_box.open("ssh_password", sealed) == PASSWORD
        assert_not_in_the_database(db_url, PASSWORD)


async def test_group_launch_forgets_the_secrets_everywhere(db_url, foreman):
    async with core_service(make_config(db_url, foreman.url), register=register_with_box) as svc:
        keys = [str(uuid.uuid4()) for _ in range(2)]
        inputs = {
            key: {"action_class": "Test::HelloWorld", "action_input": secret_input(hostname=h)}
            for key, h in zip(keys, ("web1", "web2"), strict=True)
        }
        response = await svc.client.post(
            "/tasks/launch", json={"operation": "local-group", "input": inputs}
        )
        assert response.status_code == 200, response.text
        parent_id = response.json()["parent"]["task_id"]
        parent = await wait_plan_state(svc.world, parent_id)
        assert parent.result == "success"
        for key in keys:
            await wait_plan_state(svc.world, key)
        batch_runner = parent.actions[1].output["batch_runner_id"]
        await wait_plan_state(svc.world, batch_runner)
        stored = json.dumps(await stored_inputs(svc.world, parent_id, batch_runner, *keys))
        assert PASSWORD not in stored and "sealed:" not in stored
        assert '"ssh_password": null' in stored
        assert_not_in_the_database(db_url, PASSWORD)
