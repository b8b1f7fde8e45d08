"""``POST /tasks/:id/halt``, ``GET /metrics`` (standalone core and ``/dynflow/metrics`` in the
Smart Proxy), the ``present`` middleware and the status wire format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dynflow import Action
from dynflow.middleware import Middleware
from smart_proxy_dynflow.core import Core
from smart_proxy_dynflow.proxy_plugin import DynflowPlugin
from tests.support.local_command import WaitForEvent
from tests.support.proxy import smart_proxy
from tests.support.services import FakeForeman, core_service, make_config
from tests.support.waiting import wait_for, wait_plan_state


class HidePassword(Middleware):
    def present(self, action: Action, data: dict[str, Any]) -> dict[str, Any]:
        shown = dict(data)
        shown["input"] = {**data["input"], "password": "[hidden]"}
        return shown


class WithPassword(Action):
    middleware = [HidePassword]

    def run(self) -> None:
        self.output["ok"] = True


async def deny(request: Request) -> Response | None:
    return JSONResponse({"error": "nope"}, status_code=403)


async def waiting_task(core: Core) -> str:
    triggered = await core.world.trigger(WaitForEvent, {"finish": False})

    async def suspended() -> Any:
        plan = await core.world.load_plan(triggered.id)
        return plan and plan.steps[2].state == "suspended"

    await wait_for(suspended)
    return triggered.id


def metric_samples(text: str) -> dict[str, list[Any]]:
    result: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        result.setdefault(family.name, []).extend(family.samples)
    return result


async def test_halt_a_running_task(tmp_path: Path, foreman: FakeForeman) -> None:
    config = make_config(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", foreman.url)
    async with core_service(config) as svc:
        task_id = await waiting_task(svc.core)
        response = await svc.client.post(f"/tasks/{task_id}/halt")
        assert response.status_code == 200
        assert response.json() == {"task_id": task_id, "state": "stopped"}
        status = (await svc.client.get(f"/tasks/{task_id}/status")).json()
        assert (status["state"], status["result"]) == ("stopped", "pending")
        # halting again is harmless
        again = await svc.client.post(f"/tasks/{task_id}/halt", content=b"")
        assert again.json() == {"task_id": task_id, "state": "stopped"}
        unknown = await svc.client.post("/tasks/00000000-0000-0000-0000-000000000000/halt")
        assert unknown.status_code == 404
        assert "not found" in unknown.json()["error"]
        doc = (await svc.client.get("/openapi.json")).json()
        assert {"/tasks/{task_id}/halt", "/metrics"} <= set(doc["paths"])


async def test_metrics_of_the_standalone_core(tmp_path: Path, foreman: FakeForeman) -> None:
    config = make_config(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", foreman.url)
    async with core_service(config) as svc:
        done = await (await svc.world.trigger(WithPassword, password="x")).wait(5)
        response = await svc.client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        samples = metric_samples(response.text)
        finished = [
            s for s in samples["dynflow_finished_execution_plans"]
            if s.labels.get("world") == svc.world.id and s.name.endswith("_total")
        ]
        assert [(s.labels["action"], s.labels["result"], s.value) for s in finished] == [
            (WithPassword.name(), "success", 1.0)
        ]
        assert "dynflow_step_execution_time" in samples
        assert done.result == "success"


async def test_halt_and_metrics_need_the_normal_authorization(
    tmp_path: Path, foreman: FakeForeman
) -> None:
    config = make_config(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", foreman.url)
    async with core_service(config, authorize=deny) as svc:
        task_id = await waiting_task(svc.core)
        for method, path in (("POST", f"/tasks/{task_id}/halt"), ("GET", "/metrics")):
            response = await svc.client.request(method, path)
            assert response.status_code == 403, path
            assert response.json() == {"error": "nope"}
        assert svc.world.is_running(task_id)


async def test_present_middleware_hides_data_in_the_status(
    tmp_path: Path, foreman: FakeForeman
) -> None:
    config = make_config(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", foreman.url)
    async with core_service(config) as svc:
        triggered = await svc.world.trigger(WithPassword, password="s3cret", user="admin")
        await triggered.wait(5)
        status = (await svc.client.get(f"/tasks/{triggered.id}/status")).json()
        assert status["actions"][0]["input"] == {"password": "[hidden]", "user": "admin"}
        assert status["actions"][0]["output"] == {"ok": True}
        # the plan's progress (0..1) is in the status, as in the plan hash
        assert status["progress"] == 1.0
        plan = await svc.world.load_plan(triggered.id)
        assert plan.to_hash()["progress"] == 1.0
        assert plan.actions[1].input == {"password": "s3cret", "user": "admin"}  # stored as is


async def test_metrics_and_halt_in_the_smart_proxy(tmp_path: Path, foreman: FakeForeman) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'proxy.sqlite'}"
    dynflow = {"enabled": True, "database": database, "runner_refresh_interval": 0.05}
    # Over HTTP the client is 127.0.0.1, i.e. "localhost".
    async with smart_proxy(
        tmp_path / "trusted", [DynflowPlugin], {"dynflow": dynflow},
        foreman_url=foreman.url, trusted_hosts=["localhost"],
    ) as proxy:
        core = proxy.plugin("dynflow").core
        task_id = await waiting_task(core)
        async with httpx.AsyncClient(base_url=proxy.http_url, timeout=30) as client:
            metrics = await client.get("/dynflow/metrics")
            assert metrics.status_code == 200
            samples = metric_samples(metrics.text)
            running = [
                s for s in samples["dynflow_active_execution_plans"]
                if s.labels["world"] == core.world.id and s.labels["state"] == "running"
            ]
            assert [s.value for s in running] == [1.0]
            halted = await client.post(f"/dynflow/tasks/{task_id}/halt")
            assert halted.json() == {"task_id": task_id, "state": "stopped"}
        await wait_plan_state(core.world, task_id, "stopped")
    database = f"sqlite+aiosqlite:///{tmp_path / 'denied.sqlite'}"
    dynflow["database"] = database
    async with smart_proxy(
        tmp_path / "denied", [DynflowPlugin], {"dynflow": dynflow},
        foreman_url=foreman.url, trusted_hosts=[],
    ) as proxy:
        async with httpx.AsyncClient(base_url=proxy.http_url, timeout=30) as client:
            assert (await client.get("/dynflow/metrics")).status_code == 403
            denied = await client.post(f"/dynflow/tasks/{task_id}/halt")
            assert denied.status_code == 403
