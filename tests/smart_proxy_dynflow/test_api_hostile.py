"""Hostile bodies and browsers' cross-site requests at the task API, over a real socket.

* What the engine or the console could not store and show is refused at the door with a 4xx
  JSON error and one short log line: lone surrogate escapes (keys and values, anywhere) and
  nesting deeper than ``MAX_JSON_DEPTH``, at every JSON endpoint.
* Plans stored with such values by older versions (written here through the engine, past the
  door) are still shown: status, bulk statuses and the console, also after a restart.
* Only JSON content types are parsed (415 otherwise); requests a browser marks as cross-site,
  or whose ``Origin`` is another origin, are refused (403); what Foreman sends is accepted.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

from smart_proxy.json_body import MAX_JSON_DEPTH
from smart_proxy_dynflow.console import ConsoleAccess
from tests.support.local_command import RUN_SCRIPT_NAMES, LocalCommand
from tests.support.services import core_service, make_config, run_script
from tests.support.waiting import wait_plan_state

RUN_SCRIPT = RUN_SCRIPT_NAMES[0]
JSON = {"content-type": "application/json"}
CONSOLE = ConsoleAccess(console_http=True, console_auth=False)


@pytest.fixture
def database(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"


@pytest.fixture
async def service(database: str):
    async with core_service(make_config(database), console=CONSOLE) as svc:
        yield svc


def launch_bytes(action_input: str) -> bytes:
    """A launch body with ``action_input`` spliced in as raw JSON text."""
    return (
        '{"operation": "single", "input": {"action_class": "' + RUN_SCRIPT + '", '
        '"action_input": ' + action_input + "}}"
    ).encode()


def nested(depth: int) -> str:
    """JSON text of ``depth`` nested arrays around an object: ``[[...{"x": 1}...]]``."""
    return "[" * (depth - 1) + '{"x": 1}' + "]" * (depth - 1)


def assert_refused_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """One short WARNING line of the API, no traceback, nothing at ERROR."""
    lines = [r for r in caplog.records if r.name == "smart_proxy_dynflow.api"]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].levelno == logging.WARNING and lines[0].exc_info is None
    assert len(lines[0].getMessage()) < 300
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# ---- lone surrogates ----------------------------------------------------------------------------

SURROGATE_INPUTS = {
    "value": '{"script": "echo \\ud800"}',
    "low half alone": '{"script": "true", "note": "\\udfff"}',
    "key": '{"script": "true", "\\udc00key": 1}',
    "deep in a list": '{"script": "true", "a": [1, {"b": ["x", "\\uDBFF"]}]}',
    "reversed pair": '{"script": "true", "note": "\\ude00\\ud83d"}',
}


@pytest.mark.parametrize("action_input", SURROGATE_INPUTS.values(), ids=SURROGATE_INPUTS.keys())
async def test_a_lone_surrogate_is_refused_at_launch(service, caplog, action_input):
    caplog.set_level(logging.INFO)
    response = await service.client.post(
        "/tasks/launch", content=launch_bytes(action_input), headers=JSON
    )
    assert response.status_code == 400, response.text
    assert "lone UTF-16 surrogate" in response.json()["error"]
    assert await service.world.count_plans() == 0
    assert_refused_quietly(caplog)


async def test_a_surrogate_pair_is_text_and_accepted(service):
    response = await service.client.post(
        "/tasks/launch", content=launch_bytes('{"script": "echo \\ud83d\\ude00"}'), headers=JSON
    )
    assert response.status_code == 200, response.text
    task_id = response.json()["task_id"]
    await wait_plan_state(service.world, task_id)
    status = await service.client.get(f"/tasks/{task_id}/status")
    assert status.status_code == 200
    assert "echo \N{GRINNING FACE}" in status.text


async def test_lone_surrogates_are_refused_at_every_json_endpoint(service):
    task_id = str(uuid.uuid4())
    bodies = {
        "/tasks": '{"action_name": "Test::HelloWorld", "action_input": {"\\ud800": 1}}',
        "/tasks/status": '{"task_ids": ["\\ud800"]}',
        "/tasks/statuses": '{"task_ids": ["\\ud800"]}',
        f"/tasks/{task_id}/cancel": '{"x": "\\ud800"}',
        f"/tasks/{task_id}/halt": '{"x": "\\ud800"}',
        f"/tasks/{task_id}/update": '{"step_id": 2, "x": "\\ud800"}',
        f"/tasks/{task_id}/done": '{"step_id": 2, "x": "\\ud800"}',
    }
    for path, body in bodies.items():
        response = await service.client.post(path, content=body.encode(), headers=JSON)
        assert response.status_code == 400, (path, response.text)
        assert "lone UTF-16 surrogate" in response.json()["error"]
    assert await service.world.count_plans() == 0


# ---- nesting ------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH - 2, 320, 483, 1000, 50_000])
async def test_deep_nesting_is_refused_at_launch(service, caplog, depth):
    """``depth`` levels inside ``action_input`` (the body adds 3): from the limit on, 400."""
    caplog.set_level(logging.INFO)
    body = launch_bytes(f'{{"script": "true", "deep": {nested(depth)}}}')
    response = await service.client.post("/tasks/launch", content=body, headers=JSON)
    assert response.status_code == 400, response.text[:300]
    assert f"nested too deeply (at most {MAX_JSON_DEPTH} levels)" in response.json()["error"]
    assert await service.world.count_plans() == 0
    assert_refused_quietly(caplog)


async def test_nesting_up_to_the_limit_is_stored_and_shown(service):
    # body (1) > input (2) > action_input (3) > deep (4) > ... : exactly MAX_JSON_DEPTH levels.
    body = launch_bytes(f'{{"script": "true", "deep": {nested(MAX_JSON_DEPTH - 3)}}}')
    assert json.loads(body)  # well-formed
    response = await service.client.post("/tasks/launch", content=body, headers=JSON)
    assert response.status_code == 200, response.text
    task_id = response.json()["task_id"]
    await wait_plan_state(service.world, task_id)
    status = await service.client.get(f"/tasks/{task_id}/status")
    assert status.status_code == 200
    page = await service.client.get(f"/console/{task_id}")
    assert page.status_code == 200 and "deep" in page.text


async def test_deep_nesting_is_refused_at_every_json_endpoint(service):
    task_id = str(uuid.uuid4())
    deep = nested(1000)
    bodies = {
        "/tasks": f'{{"action_name": "Test::HelloWorld", "action_input": {deep}}}',
        "/tasks/status": f'{{"task_ids": {deep}}}',
        "/tasks/statuses": f'{{"task_ids": {deep}}}',
        f"/tasks/{task_id}/cancel": deep,
        f"/tasks/{task_id}/halt": deep,
        f"/tasks/{task_id}/update": f'{{"step_id": 2, "x": {deep}}}',
        f"/tasks/{task_id}/done": f'{{"step_id": 2, "x": {deep}}}',
        "/tasks/launch": f'{{"operation": {nested(MAX_JSON_DEPTH + 1)}}}',
    }
    for path, body in bodies.items():
        response = await service.client.post(path, content=body.encode(), headers=JSON)
        assert response.status_code == 400, (path, response.text[:300])
        assert "nested too deeply" in response.json()["error"]
    assert await service.world.count_plans() == 0


async def test_nan_is_not_json(service):
    body = launch_bytes('{"script": "true", "x": NaN}')
    response = await service.client.post("/tasks/launch", content=body, headers=JSON)
    assert response.status_code == 400
    assert "NaN is not valid JSON" in response.json()["error"]


# ---- values stored by older versions ------------------------------------------------------------


async def test_plans_stored_with_bad_values_are_still_shown(database):
    """Written past the door (as an older version did): a lone surrogate and 400 levels."""
    deep: Any = {"x": 1}
    for _ in range(400):
        deep = [deep]
    async with core_service(make_config(database), console=CONSOLE) as svc:
        good = await svc.client.post("/tasks/launch", json=run_script({"script": "true"}))
        good_id = good.json()["task_id"]
        bad = await svc.world.trigger(
            LocalCommand,
            {"script": "true", "note": "bad \ud800 text", "\udfffkey": 1, "callback_host": "x"},
        )
        deeper = await svc.world.trigger(
            LocalCommand, {"script": "true", "deep": deep, "callback_host": "x"}
        )
        for plan_id in (good_id, bad.id, deeper.id):
            await wait_plan_state(svc.world, plan_id)
        await check_shown(svc, good_id, bad.id, deeper.id)
    # The same after a restart: nothing was cached.
    async with core_service(make_config(database), console=CONSOLE) as svc:
        await check_shown(svc, good_id, bad.id, deeper.id)


async def check_shown(svc: Any, good_id: str, bad_id: str, deep_id: str) -> None:
    status = await svc.client.get(f"/tasks/{bad_id}/status")
    assert status.status_code == 200, status.text
    action = next(a for a in status.json()["actions"] if a["input"].get("script"))
    assert action["input"]["note"] == "bad \N{REPLACEMENT CHARACTER} text"
    assert "\N{REPLACEMENT CHARACTER}key" in action["input"]
    deep_status = await svc.client.get(f"/tasks/{deep_id}/status")
    assert deep_status.status_code == 200
    batch = await svc.client.post(
        "/tasks/statuses", json={"task_ids": [good_id, bad_id, deep_id]}
    )
    assert batch.status_code == 200, batch.text
    assert set(batch.json()) == {good_id, bad_id, deep_id}
    states = await svc.client.post("/tasks/status", json={"task_ids": [good_id, bad_id]})
    assert states.status_code == 200 and set(states.json()) == {good_id, bad_id}
    page = await svc.client.get(f"/console/{bad_id}")
    assert page.status_code == 200
    assert "bad \N{REPLACEMENT CHARACTER} text" in page.text
    deep_page = await svc.client.get(f"/console/{deep_id}")
    assert deep_page.status_code == 200
    assert "nested too deeply to show" in " ".join(deep_page.text.split())  # YAML wraps it


# ---- content types ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonp",
        "application/json-seq",
        "text/json",
        None,
    ],
)
async def test_a_body_that_is_not_declared_json_is_415(service, content_type):
    body = json.dumps(run_script({"script": "touch /tmp/pwned"})).encode()
    headers = {"content-type": content_type} if content_type else {}
    for path in ("/tasks/launch", "/tasks", "/tasks/statuses"):
        response = await service.client.post(path, content=body, headers=headers)
        assert response.status_code == 415, (path, response.text)
        assert "must be JSON (Content-Type: application/json)" in response.json()["error"]
    assert await service.world.count_plans() == 0


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        "application/vnd.foreman+json",
        "application/merge-patch+json; charset=utf-8",
    ],
)
async def test_json_content_types_are_parsed(service, content_type):
    body = json.dumps(run_script({"script": "true"})).encode()
    response = await service.client.post(
        "/tasks/launch", content=body, headers={"content-type": content_type}
    )
    assert response.status_code == 200, response.text
    assert response.json()["result"] == "success"


async def test_a_post_without_a_body_needs_no_content_type(service):
    launched = await service.client.post("/tasks/launch", json=run_script({"script": "sleep 30"}))
    task_id = launched.json()["task_id"]
    for headers in ({}, {"content-type": "text/plain"}, JSON):
        response = await service.client.post(f"/tasks/{task_id}/cancel", headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["task_id"] == task_id
    assert (await service.client.post("/tasks/status", headers={})).json() == {}


async def test_what_foreman_sends_is_accepted(service):
    """ProxyAPI::Resource + DynflowProxy::Task: Accept and Content-Type JSON, request and
    session ids, no Origin, no Sec-Fetch-*; cancel posts an empty body."""
    headers = {
        "Accept": "application/json",
        "Content-Type": "application/json",
        "X-Request-Id": str(uuid.uuid4()),
        "X-Session-Id": str(uuid.uuid4()),
        "User-Agent": "rest-client/2.1.0 (linux x86_64) ruby/3.0.4p208",
    }
    body = json.dumps(
        {"input": run_script({"script": "sleep 30"})["input"], "operation": "single", "options": {}}
    )
    launched = await service.client.post("/tasks/launch", content=body, headers=headers)
    assert launched.status_code == 200, launched.text
    task_id = launched.json()["task_id"]
    states = await service.client.post(
        "/tasks/status", content=json.dumps({"task_ids": [task_id]}), headers=headers
    )
    assert states.status_code == 200 and task_id in states.json()
    cancel = await service.client.post(f"/tasks/{task_id}/cancel", content="", headers=headers)
    assert cancel.status_code == 200, cancel.text
    count = await service.client.get("/tasks/count?state=running", headers=headers)
    assert count.status_code == 200


# ---- cross-site requests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},
        {"sec-fetch-site": "Cross-Site"},
        {"origin": "https://evil.example.com"},
        {"origin": "null"},
        {"origin": "not a url"},
        {"origin": "http://127.0.0.1:1"},  # another port of the same host
        {"origin": "https://{host}"},  # another scheme
    ],
    ids=lambda h: next(iter(h.items()))[1],
)
async def test_browser_cross_site_requests_are_403(service, caplog, headers):
    caplog.set_level(logging.INFO)
    host = service.url.removeprefix("http://")
    sent = {k: v.format(host=host) for k, v in headers.items()}
    body = json.dumps(run_script({"script": "touch /tmp/pwned"}))
    for content_type in ("text/plain", "application/json"):
        response = await service.client.post(
            "/tasks/launch", content=body, headers={**sent, "content-type": content_type}
        )
        assert response.status_code == 403, response.text
        assert "cross-site requests are refused" in response.json()["error"]
    status = await service.client.get("/tasks/count", headers=sent)
    assert status.status_code == 403
    assert await service.world.count_plans() == 0
    refusals = [r for r in caplog.records if "cross-site requests are refused" in r.getMessage()]
    assert refusals and all(r.exc_info is None for r in refusals)


@pytest.mark.parametrize(
    "headers",
    [
        {"sec-fetch-site": "same-origin"},
        {"sec-fetch-site": "none"},
        {"origin": "http://{host}"},
        {"origin": "HTTP://{host}", "sec-fetch-site": "same-origin"},
    ],
    ids=lambda h: "+".join(h.values()),
)
async def test_same_origin_browser_requests_are_served(service, headers):
    host = service.url.removeprefix("http://")
    sent = {k: v.format(host=host) for k, v in headers.items()}
    response = await service.client.post(
        "/tasks/launch", json=run_script({"script": "true"}), headers=sent
    )
    assert response.status_code == 200, response.text
