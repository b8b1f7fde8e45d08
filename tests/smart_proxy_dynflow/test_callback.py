"""Callbacks to Foreman: exact body (case 11), retries while Foreman is away, restarts; a
callback Foreman rejects pauses the plan at once, transient failures only for
``callback_retry_window``."""

from __future__ import annotations

import asyncio
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from smart_proxy_dynflow.foreman import CallbackFailed, callback_url
from tests.support.services import FakeForeman, core_service, free_port, make_config, run_script
from tests.support.waiting import wait_for, wait_plan_state


async def _true(value: Any) -> Any:
    return value


def test_callback_url_drops_any_path_prefix():
    assert callback_url("https://foreman.example.com/prefix/") == (
        "https://foreman.example.com/foreman_tasks/api/tasks/callback"
    )
    assert callback_url("http://127.0.0.1:3000") == (
        "http://127.0.0.1:3000/foreman_tasks/api/tasks/callback"
    )


async def test_callback_body_is_exactly_callback_and_data(db_url: str):
    foreman = FakeForeman()
    await foreman.start()
    try:
        async with core_service(make_config(db_url, foreman.url)) as svc:
            response = await svc.client.post(
                "/tasks",
                json={
                    "action_name": "Test::HelloWorld",
                    "action_input": {"callback": {"task_id": "123", "step_id": 123}},
                },
            )
            await wait_plan_state(svc.world, response.json()["task_id"])
            assert foreman.callbacks == [
                {"callback": {"task_id": "123", "step_id": 123}, "data": {"result": "Hello World"}}
            ]
    finally:
        await foreman.stop()


async def launch_scripts(svc: Any, count: int) -> list[str]:
    ids = []
    for i in range(count):
        response = await svc.client.post(
            "/tasks/launch",
            json=run_script(
                {
                    "script": f"echo job-{i}",
                    "callback": {"task_id": f"foreman-task-{i}", "step_id": 3},
                }
            ),
        )
        assert response.json()["result"] == "success"
        ids.append(response.json()["task_id"])
    return ids


async def callback_attempts(svc: Any, task_id: str) -> int:
    plan = await svc.world.load_plan(task_id)
    return int(plan.actions[2].output.get("attempts", 0)) if plan else 0


async def test_callbacks_wait_for_foreman_and_arrive_once(tmp_path: Path):
    foreman = FakeForeman()  # not started: Foreman is down
    config = make_config(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", foreman.url)
    async with core_service(config) as svc:
        ids = await launch_scripts(svc, 3)
        for task_id in ids:
            await wait_for(lambda t=task_id: _attempted(svc, t, 3))
            assert (await svc.world.load_plan(task_id)).state == "running"
        # Foreman answers, but with errors: still not delivered.
        foreman.status = 503
        await foreman.start()
        await wait_for(lambda: _true(len(foreman.requests) >= 3))
        assert foreman.callbacks == []
        foreman.status = 200
        for task_id in ids:
            plan = await wait_plan_state(svc.world, task_id)
            assert plan.result == "success"
            assert plan.actions[2].output["delivered_at"] > 0
        await asyncio.sleep(0.5)  # any duplicate would have been sent by now
    await foreman.stop()
    assert sorted(c["callback"]["task_id"] for c in foreman.callbacks) == [
        "foreman-task-0",
        "foreman-task-1",
        "foreman-task-2",
    ]
    assert all(c["data"]["exit_status"] == 0 for c in foreman.callbacks)


async def _attempted(svc: Any, task_id: str, n: int) -> bool:
    return await callback_attempts(svc, task_id) >= n


async def test_callbacks_survive_a_restart_of_the_service(db_url: str):
    foreman = FakeForeman(port=free_port())
    # Long back-off: after the restart only the recovery attempt can deliver quickly.
    config = make_config(
        db_url, foreman.url, callback_retry_interval=0.05, callback_retry_max_interval=0.1
    )
    async with core_service(config) as svc:
        ids = await launch_scripts(svc, 2)
        for task_id in ids:
            await wait_for(lambda t=task_id: _attempted(svc, t, 2))
    await foreman.start()
    try:
        assert foreman.callbacks == []
        async with core_service(config) as svc:
            for task_id in ids:
                plan = await wait_plan_state(svc.world, task_id)
                assert plan.result == "success"
            await asyncio.sleep(0.5)
        assert sorted(c["callback"]["task_id"] for c in foreman.callbacks) == [
            "foreman-task-0",
            "foreman-task-1",
        ]
        outputs = sorted(c["data"]["result"][0]["output"] for c in foreman.callbacks)
        assert outputs == ["job-0\n", "job-1\n"]
        # A third start sends nothing again.
        async with core_service(config):
            await asyncio.sleep(0.5)
        assert len(foreman.callbacks) == 2
    finally:
        await foreman.stop()


async def test_callback_gives_up_after_the_retry_window(tmp_path: Path):
    foreman = FakeForeman()
    config = make_config(
        f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}",
        foreman.url,
        callback_retry_window=0.3,
    )
    async with core_service(config) as svc:
        (task_id,) = await launch_scripts(svc, 1)
        plan = await wait_plan_state(svc.world, task_id, "paused")
        step = plan.steps[plan.actions[2].run_step_id]
        assert step.state == "error"
        assert "Failed performing callback to Foreman server" in step.error["message"]
        # Foreman's 10-minute poll still finds the result in the status.
        status = (await svc.client.get(f"/tasks/{task_id}/status")).json()
        assert status["state"] == "paused"
        assert status["actions"][0]["output"]["exit_status"] == 0


@pytest.mark.parametrize(
    ("status", "permanent"),
    [(400, True), (401, True), (403, True), (404, True), (422, True)]
    + [(408, False), (429, False), (500, False), (502, False), (503, False), (None, False)],
)
def test_which_failures_are_permanent(status: int | None, permanent: bool):
    assert CallbackFailed("Failed performing callback", status).permanent is permanent


@pytest.mark.parametrize("status", [403, 404, 422])
async def test_a_rejected_callback_pauses_the_plan_at_once(tmp_path: Path, status: int):
    """Foreman said no (not 408/429): the step errors on the first answer, as the original's
    ``Callback::Action`` raises; the plan pauses with its full result for Foreman's poll."""
    foreman = FakeForeman(status=status)
    await foreman.start()
    try:
        config = make_config(
            f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}",
            foreman.url,
            callback_retry_interval=0.05,
            callback_retry_max_interval=0.05,
            execution_plan_cleaner_age=0.2,
            cleaner_interval=3600,  # the test runs the cleaner itself
        )
        async with core_service(config) as svc:
            (task_id,) = await launch_scripts(svc, 1)
            plan = await wait_plan_state(svc.world, task_id, "paused")
            await asyncio.sleep(0.3)  # a retry would have been sent by now
            assert len(foreman.requests) == 1
            callback = plan.actions[2]
            assert callback.output["attempts"] == 1
            assert "delivered_at" not in callback.output
            step = plan.steps[callback.run_step_id]
            assert step.state == "error"
            assert step.error["message"].startswith(
                f"Failed performing callback to Foreman server: {status} "
            )
            # What Foreman's safety-net poll reads: the plan is paused (it acts on that) and
            # the runner action's output is complete.
            states = (await svc.client.post("/tasks/status", json={"task_ids": [task_id]})).json()
            assert states[task_id]["state"] == "paused"
            assert states[task_id]["result"] == "error"
            detail = (await svc.client.get(f"/tasks/{task_id}/status")).json()
            output = detail["actions"][0]["output"]
            assert output["exit_status"] == 0
            assert "".join(r["output"] for r in output["result"]) == "job-0\n"
            # The cleaner deletes stopped plans after execution_plan_cleaner_age (here 0.2 s),
            # paused ones only after paused_max_age (7 days): the poll will find it.
            assert svc.world.config.paused_max_age == 7 * 24 * 3600
            await asyncio.sleep(0.3)
            await svc.world.cleaner.clean()
            assert await svc.world.load_plan(task_id) is not None
    finally:
        await foreman.stop()


@pytest.mark.parametrize("status", [408, 429, 503])
async def test_transient_answers_are_retried(tmp_path: Path, status: int):
    foreman = FakeForeman(status=status)
    await foreman.start()
    try:
        config = make_config(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", foreman.url)
        async with core_service(config) as svc:
            (task_id,) = await launch_scripts(svc, 1)
            await wait_for(lambda: _attempted(svc, task_id, 3))
            assert (await svc.world.load_plan(task_id)).state == "running"
            foreman.status = 200
            plan = await wait_plan_state(svc.world, task_id)
            assert plan.result == "success"
        assert len(foreman.callbacks) == 1
    finally:
        await foreman.stop()


async def test_the_last_retry_is_pulled_in_to_the_end_of_the_window(tmp_path: Path):
    """Back-off 0.5, 1, 2 s... in a 2 s window: attempts at 0, 0.5, 1.5 and then at 2.0 (not
    at 3.5): the plan pauses when the window ends, not one back-off step later."""
    foreman = FakeForeman()  # not started: connections are refused
    config = make_config(
        f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}",
        foreman.url,
        callback_retry_interval=0.5,
        callback_retry_max_interval=100.0,
        callback_retry_window=2.0,
    )
    async with core_service(config) as svc:
        (task_id,) = await launch_scripts(svc, 1)
        plan = await wait_plan_state(svc.world, task_id, "paused")
        output = plan.actions[2].output
        ended = plan.steps[plan.actions[2].run_step_id].ended_at  # naive UTC, as stored
        ended_at = ended.replace(tzinfo=UTC).timestamp()
        assert output["attempts"] == 4
        assert 2.0 <= ended_at - output["first_attempt_at"] < 3.0
        assert "Failed performing callback to Foreman server" in output["last_error"]


async def test_callback_over_mutual_tls(tmp_path: Path):
    """Foreman over HTTPS: the proxy's client certificate is sent, Foreman's is verified."""
    import ssl

    from smart_proxy.tls import server_context
    from tests.support.certs import make_pki

    pki = make_pki(tmp_path)
    context = server_context(pki.server_cert, pki.server_key, pki.ca_cert)
    context.verify_mode = ssl.CERT_REQUIRED  # a real Foreman (Apache) insists on it
    foreman = FakeForeman(ssl_context=context)
    await foreman.start()
    try:
        config = make_config(
            f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}",
            foreman.url,
            foreman_ssl_ca=pki.ca_cert,
            foreman_ssl_cert=pki.client_cert,
            foreman_ssl_key=pki.client_key,
        )
        async with core_service(config) as svc:
            (task_id,) = await launch_scripts(svc, 1)
            plan = await wait_plan_state(svc.world, task_id)
            assert plan.result == "success"
        assert foreman.client_cns == [pki.client_cn]
        assert foreman.callbacks[0]["callback"]["task_id"] == "foreman-task-0"

        # A Foreman whose certificate is not signed by the configured CA is never trusted.
        config = make_config(
            f"sqlite+aiosqlite:///{tmp_path / 'db2.sqlite'}",
            foreman.url,
            foreman_ssl_ca=pki.foreign_ca_cert,
            foreman_ssl_cert=pki.client_cert,
            foreman_ssl_key=pki.client_key,
        )
        async with core_service(config) as svc:
            (task_id,) = await launch_scripts(svc, 1)
            await wait_for(lambda: _attempted(svc, task_id, 2))
            plan = await svc.world.load_plan(task_id)
            assert "CERTIFICATE_VERIFY_FAILED" in plan.actions[2].output["last_error"]
        assert len(foreman.callbacks) == 1
    finally:
        await foreman.stop()
