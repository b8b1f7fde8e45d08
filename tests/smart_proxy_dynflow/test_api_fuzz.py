"""Random bodies at every endpoint: always an answer below 500, JSON when there is a body."""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import core_service, make_config

KEYS = [
    "operation",
    "input",
    "options",
    "action_class",
    "action_input",
    "action_name",
    "task_ids",
    "step_id",
    "callback",
    "script",
    "proxy_url",
    "secrets",
]
VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**70,
    1.5,
    "",
    "single",
    "local-batch",
    "x" * 5000,
    "ForemanRemoteExecutionCore::Actions::RunScript",
    "Test::HelloWorld",
    "os.system",
    [],
    {},
    ["a"],
    [1, 2],
    {"a": 1},
    "\u0000\ud7ff",
    str(uuid.UUID(int=7)),
]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 3 and roll < 0.25:
        return {
            rng.choice(KEYS + [str(uuid.UUID(int=rng.randrange(9)))]): random_value(rng, depth + 1)
            for _ in range(rng.randrange(4))
        }
    if depth < 3 and roll < 0.35:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return rng.choice(VALUES)


def random_body(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
    if kind < 0.2:
        return json.dumps(random_value(rng)).encode()
    body = {key: random_value(rng) for key in rng.sample(KEYS, rng.randrange(1, 5))}
    return json.dumps(body).encode()


@pytest.fixture
async def service(tmp_path: Path):
    config = make_config(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    async with core_service(config) as svc:
        yield svc


async def test_random_requests_never_fail_the_service(service):
    rng = random.Random(20261126)
    known = await service.client.post(
        "/tasks", json={"action_name": "Test::WaitForEvent", "action_input": {}}
    )
    task_id = known.json()["task_id"]
    paths = [
        ("POST", "/tasks"),
        ("POST", "/tasks/launch"),
        ("POST", "/tasks/status"),
        ("POST", "/tasks/statuses"),
        ("GET", "/tasks/count"),
        ("GET", "/tasks/operations"),
        ("POST", f"/tasks/{task_id}/update"),
        ("POST", f"/tasks/{task_id}/cancel"),
        ("GET", f"/tasks/{task_id}/status"),
        ("POST", f"/tasks/{uuid.uuid4()}/done"),
    ]
    statuses: dict[int, int] = {}
    for _ in range(400):
        method, path = rng.choice(paths)
        if method == "GET":
            response = await service.client.get(path, params={"state": random_value(rng)})
        else:
            response = await service.client.post(
                path, content=random_body(rng), headers={"content-type": "application/json"}
            )
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (path, response.text)
        if response.content:
            assert isinstance(response.json(), dict | list)
    assert statuses.get(200, 0) > 0 and sum(v for k, v in statuses.items() if k >= 400) > 0
