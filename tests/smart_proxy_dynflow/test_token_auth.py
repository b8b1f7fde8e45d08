"""One-time passwords on ``/update`` and ``/done`` (case 17), without the original's bypass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from smart_proxy_dynflow.otp import OtpManager
from tests.support.services import core_service, make_config
from tests.support.waiting import wait_for


async def deny_all(request: Request) -> Response | None:
    return JSONResponse({"error": "client not trusted"}, status_code=403)


@pytest.fixture
async def service(tmp_path: Path):
    config = make_config(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    async with core_service(config, authorize=deny_all) as svc:
        yield svc


async def waiting_task(svc: Any) -> str:
    """A plan suspended in WaitForEvent, triggered directly (the API itself is denied)."""
    from tests.support.local_command import WaitForEvent

    triggered = await svc.world.trigger(WaitForEvent, {"finish": False})

    async def suspended() -> Any:
        plan = await svc.world.load_plan(triggered.id)
        return plan and plan.steps[2].state == "suspended"

    await wait_for(suspended)
    return triggered.id


def basic(task_id: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + OtpManager.tokenize(task_id, password)}


async def test_token_flow(service):
    task_id = await waiting_task(service)
    other_id = await waiting_task(service)
    password = service.core.otp.generate(task_id)
    other_password = service.core.otp.generate(other_id)
    body = {"step_id": 2, "finish": False}
    url = f"/tasks/{task_id}"

    ok = await service.client.post(f"{url}/update", json=body, headers=basic(task_id, password))
    assert ok.status_code == 200
    again = await service.client.post(f"{url}/update", json=body, headers=basic(task_id, password))
    assert again.status_code == 200  # update keeps the password

    wrong = await service.client.post(f"{url}/update", json=body, headers=basic(task_id, "nope"))
    assert wrong.status_code == 403
    assert wrong.json() == {"error": "Invalid username or password supplied"}

    # A valid token of another task does not open this one.
    foreign = await service.client.post(
        f"{url}/update", json=body, headers=basic(other_id, other_password)
    )
    assert foreign.status_code == 403

    done = await service.client.post(
        f"{url}/done", json={"step_id": 2}, headers=basic(task_id, password)
    )
    assert done.status_code == 200
    reused = await service.client.post(
        f"{url}/done", json={"step_id": 2}, headers=basic(task_id, password)
    )
    assert reused.status_code == 403  # done consumed it

    plan = await service.world.load_plan(task_id)
    assert [e.get("finish", True) for e in plan.actions[1].output["events"]] == [False, False, True]


async def test_no_authorization_header_falls_back_to_client_authorization(service):
    task_id = await waiting_task(service)
    service.core.otp.generate(task_id)
    response = await service.client.post(f"/tasks/{task_id}/done", json={"step_id": 2})
    assert response.status_code == 403
    assert response.json() == {"error": "client not trusted"}
    # Other endpoints are guarded by the client authorization as well.
    assert (await service.client.get("/tasks/count")).status_code == 403
    assert (await service.client.get(f"/tasks/{task_id}/status")).status_code == 403


async def test_other_schemes_and_tokens_without_colon_are_rejected(service):
    import base64

    task_id = await waiting_task(service)
    service.core.otp.generate(task_id)
    for header in (
        "Bearer abc",
        "Basic " + base64.b64encode(task_id.encode()).decode(),
        "Basic !!!",
    ):
        response = await service.client.post(
            f"/tasks/{task_id}/update", json={"step_id": 2}, headers={"Authorization": header}
        )
        assert response.status_code == 403, header
