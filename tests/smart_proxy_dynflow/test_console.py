"""The console over HTTP (no browser): pages, filters, 4xx pages, redaction, live updates,
actions and their protection against cross-site request forgery.

One core (SQLite file) serves the whole module through the task API's application, spoken to
in-process (``httpx.ASGITransport``: plain HTTP, the console allowed there by
``console_http``). TLS and the deployments are in ``test_console_auth.py``, the browser in
``test_console_browser.py``.
"""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from smart_proxy_dynflow.api import create_app
from smart_proxy_dynflow.console import ConsoleAccess
from smart_proxy_dynflow.console.security import CSRF_COOKIE, FormGuard
from smart_proxy_dynflow.core import Core
from tests.support.console_actions import SECRET, AlwaysFails, Maintenance, Release
from tests.support.local_command import register_test_actions
from tests.support.services import make_config, run_script
from tests.support.waiting import wait_for, wait_plan_state

pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Env:
    core: Core
    client: httpx.AsyncClient
    releases: list[str]
    failed_script: str
    batch_parent: str

    @property
    def world(self) -> Any:
        return self.core.world


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    path: Path = tmp_path_factory.mktemp("console") / "dynflow.sqlite"
    core = Core(make_config(f"sqlite+aiosqlite:///{path}"))
    register_test_actions(core)
    await core.start()
    app = create_app(core, console=ConsoleAccess(console_http=True))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as client:
        world = core.world
        releases = []
        for app_name in ("billing", "inventory", "web"):
            done = await world.trigger(Release, app=app_name, hosts=["a.example.com", "b"])
            await done.wait(10)
            releases.append(done.id)
        answer = await client.post(
            "/tasks/launch",
            json=run_script({"script": "echo checking; echo 'no space left' >&2; exit 28"}),
        )
        failed_script = answer.json()["task_id"]
        batch = {
            str(uuid.uuid4()): {"action_class": "Test::HelloWorld", "action_input": {}}
            for _ in range(3)
        }
        answer = await client.post(
            "/tasks/launch", json={"operation": "local-batch", "input": batch, "options": {}}
        )
        batch_parent = answer.json()["parent"]["task_id"]
        await wait_plan_state(world, failed_script)
        await wait_plan_state(world, batch_parent)
        yield Env(core, client, releases, failed_script, batch_parent)
    await core.stop()


def text_of(page: str) -> str:
    """The visible text of an HTML page, whitespace collapsed."""
    body = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", page, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body))).strip()


def token_of(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "no form token in the page"
    return match.group(1)


async def form_token(client: httpx.AsyncClient, path: str) -> str:
    """Open a page (which sets the token cookie) and return the token of its forms."""
    answer = await client.get(path)
    assert answer.status_code == 200, answer.text
    return token_of(answer.text)


# ---- the list ---------------------------------------------------------------------------------


async def test_list_shows_plans_with_counts_per_state(env: Env) -> None:
    async def counts() -> tuple[int, int]:
        return await env.world.count_plans(), await env.world.count_plans({"state": "stopped"})

    async def page_between_equal_counts() -> tuple[httpx.Response, tuple[int, int]] | None:
        # the fixture's plans may still be ending on a loaded machine: a page is compared
        # with the counts only when nothing ended while it was rendered
        before = await counts()
        answer = await env.client.get("/console")
        return (answer, before) if await counts() == before else None

    answer, (total, stopped) = await wait_for(page_between_equal_counts, timeout=30)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    text = text_of(answer.text)
    assert f"all {total}" in text
    assert f"stopped {stopped}" in text
    assert "error 1" in text  # the failed script
    assert "Id Label State Result Started (UTC) ▼ Ended (UTC) Duration" in text
    assert env.releases[-1][:8] in text
    assert f"Page 1 of 1 · {total} plans" in text
    # The same page at /console/ and the original's ordering parameters.
    assert (await env.client.get("/console/")).status_code == 200
    assert (await env.client.get("/console/?order_by=label&desc=false")).status_code == 200


async def test_list_filters_by_state_result_label_and_search(env: Env) -> None:
    client = env.client
    text = text_of((await client.get("/console", params={"result": "error"})).text)
    assert env.failed_script[:8] in text
    assert env.releases[0][:8] not in text
    assert "1 plan" in text

    label = "tests.support.console_actions.Release"
    text = text_of((await client.get("/console", params={"label": label})).text)
    assert all(r[:8] in text for r in env.releases)
    assert env.failed_script[:8] not in text
    assert "3 plans" in text

    # The original's form: filters[state][]=...
    answer = await client.get("/console", params={"filters[state][]": ["stopped", "paused"]})
    assert answer.status_code == 200

    # Search: the label contains the text (any case), or the id starts with it.
    text = text_of((await client.get("/console", params={"q": "CONSOLE_ACTIONS.rel"})).text)
    assert "3 plans" in text
    text = text_of((await client.get("/console", params={"q": env.releases[1][:6]})).text)
    assert env.releases[1][:8] in text
    assert "1 plan" in text
    text = text_of((await client.get("/console", params={"q": "no such plan%_"})).text)
    assert "No plan matches these filters" in text


async def test_list_orders_and_pages(env: Env) -> None:
    client = env.client
    answer = await client.get("/console", params={"order": "label", "desc": "0", "per_page": 2})
    labels = re.findall(r'<td class="label"><a [^>]*>([^<]+)</a>', answer.text)
    assert len(labels) == 2 and labels == sorted(labels)
    total = await env.world.count_plans()
    pages = -(-total // 2)
    assert f"Page 1 of {pages}" in text_of(answer.text)
    last = await client.get(
        "/console", params={"order": "label", "desc": "0", "per_page": 2, "page": pages - 1}
    )
    assert f"Page {pages} of {pages}" in text_of(last.text)
    everything = await client.get("/console", params={"order": "label", "desc": "1"})
    all_labels = re.findall(r'<td class="label"><a [^>]*>([^<]+)</a>', everything.text)
    assert all_labels == sorted(all_labels, reverse=True)


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"page": "abc"}, 400, "'page' must be a whole number, not 'abc'"),
        ({"page": "-1"}, 400, "'page' must be at least 0"),
        ({"page": "999"}, 404, "There is no page 1000 (page=999)"),
        ({"per_page": "0"}, 400, "'per_page' must be at least 1"),
        ({"per_page": "100000"}, 400, "'per_page' must be at most 500"),
        ({"order": "uuid; drop table"}, 400, "Cannot order by 'uuid; drop table'"),
        ({"state": "exploded"}, 400, "Unknown state 'exploded'"),
        ({"result": "meh"}, 400, "Unknown result 'meh'"),
        ({"filters[password][]": "x"}, 400, "Cannot filter by 'password'"),
        ({"desc": "sideways"}, 400, "'desc' must be true or false"),
        ({"parent_action": "1"}, 400, "'parent_action' needs 'parent'"),
    ],
)
async def test_bad_list_queries_are_4xx_pages(env: Env, params, status, message) -> None:
    answer = await env.client.get("/console", params=params)
    assert answer.status_code == status
    assert answer.headers["content-type"].startswith("text/html")
    assert message in text_of(answer.text)
    assert "Traceback" not in answer.text


# ---- one plan -------------------------------------------------------------------------------


async def test_plan_page_shows_flow_steps_and_output(env: Env) -> None:
    plan_id = env.releases[0]
    answer = await env.client.get(f"/console/{plan_id}")
    assert answer.status_code == 200
    page = answer.text
    text = text_of(page)
    assert "tests.support.console_actions.Release" in text
    assert plan_id in text
    assert "State stopped Result success" in text
    # Run: a sequence holding two concurrences (tests, deployments); Plan; Finalize; History.
    assert page.count('class="flow flow-concurrence"') == 2
    assert "concurrently · 3 branches" in text and "concurrently · 2 branches" in text
    for name in ("Checkout", "Compile", "UnitTests", "IntegrationTests", "Lint", "Publish"):
        assert f'<span class="ns">tests.support.console_actions.</span>{name}' in page
    assert "fetched: origin/main" in text  # a chunk of Checkout's output
    # an input's output reference is stored resolved once its step ran (as Dynflow does)
    assert ".tar.gz" in text
    for tab in ("Run", "Plan", "Finalize", "History"):
        assert f'data-tab="{tab.lower()}"' in page
    assert "start execution" in text and "finish execution" in text
    # The plan tab nests planned actions under the action that planned them.
    tree = page[page.index('id="tab-plan"') : page.index('id="tab-finalize"')]
    assert tree.count('class="tree-children"') >= 1
    # Nothing to do on a finished plan.
    assert "Resume" not in text and "Cancel plan" not in text


async def test_secrets_are_redacted_everywhere(env: Env) -> None:
    world = env.world
    release = env.releases[0]
    started = await world.trigger(Maintenance, migrate=False)
    failed = await wait_plan_state(world, started.id, "paused")
    step = next(s for s in failed.steps.values() if s.state == "error")
    assert SECRET in str(step.error)  # stored as it was raised...
    for path in (
        f"/console/{release}",
        f"/console/{release}/live",
        f"/console/{started.id}",
        f"/console/{started.id}/live",
        f"/console/{started.id}?tab=plan",
    ):
        answer = await env.client.get(path)
        assert answer.status_code == 200, path
        assert SECRET not in answer.text, path  # ...but never shown
        assert "[FILTERED]" in answer.text, path
    text = text_of((await env.client.get(f"/console/{started.id}")).text)
    assert "RuntimeError : disk /var is full (password=[FILTERED])" in text
    assert "Backtrace" in text and "_deep_failure" in text


async def test_runner_output_is_shown_as_a_terminal_and_downloadable(env: Env) -> None:
    plan = await env.world.load_plan(env.failed_script)
    action_id = next(a.id for a in plan.actions.values() if a.run_step_id)
    page = (await env.client.get(f"/console/{env.failed_script}")).text
    assert '<span class="out out-stdout">checking\n</span>' in page
    assert '<span class="out out-stderr">no space left\n</span>' in page
    assert "State stopped Result error" in text_of(page)
    assert "1 failed step" in text_of(page)
    answer = await env.client.get(f"/console/{env.failed_script}/actions/{action_id}/output.txt")
    assert answer.status_code == 200
    assert answer.text == "checking\nno space left\n"
    missing = await env.client.get(f"/console/{env.failed_script}/actions/99/output.txt")
    assert missing.status_code == 404


async def test_sub_plans_of_a_batch(env: Env) -> None:
    parent = env.batch_parent
    text = text_of((await env.client.get(f"/console/{parent}")).text)
    assert "Sub-plans 3" in text
    plan = await env.world.load_plan(parent)
    action_id = plan.root_action().id
    answer = await env.client.get(f"/console/{parent}/actions/{action_id}/sub_plans")
    assert answer.status_code == 200
    text = text_of(answer.text)
    assert f"Sub-plans of {parent[:8]} action {action_id}" in text
    assert "3 plans" in text
    children = await env.world.sub_plans(parent)
    assert all(c.id[:8] in text for c in children)
    child_page = text_of((await env.client.get(f"/console/{children[0].id}")).text)
    assert f"Parent plan {parent}" in child_page


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/console/0000-not-a-plan", 404, "No execution plan with id '0000-not-a-plan'"),
        ("/console/0000/live", 404, "No execution plan with id '0000'"),
        ("/console/{release}?tab=secret", 400, "Unknown tab 'secret'"),
        ("/console/{release}/live?after=x", 400, "'after' must be a whole number"),
        ("/console/{release}/actions/x/sub_plans", 404, "There is no action 'x'"),
        ("/console/{release}/actions/1/output.txt", 404, "has no action 1 with a run step"),
        ("/console/{release}/resume", 404, "There is no console page at"),
        ("/console/a/b/c/d", 404, "There is no console page at /console/a/b/c/d"),
    ],
)
async def test_bad_plan_requests_are_4xx_pages(env: Env, path, status, message) -> None:
    answer = await env.client.get(path.format(release=env.releases[0]))
    assert answer.status_code == status
    assert message in text_of(answer.text)
    assert "Traceback" not in answer.text


async def test_live_updates(env: Env) -> None:
    world = env.world
    answer = await env.client.post(
        "/tasks/launch",
        json=run_script({"script": "echo one; sleep 0.3; echo two; sleep 30"}),
    )
    plan_id = answer.json()["task_id"]
    first = (await env.client.get(f"/console/{plan_id}/live")).json()
    assert first["state"] == "running" and first["live"] is True

    async def two_lines() -> Any:
        # The step is "running" for a moment while it takes each update: wait for suspended.
        data = (await env.client.get(f"/console/{plan_id}/live")).json()
        output = "".join(data["output"].values())
        suspended = any(s["state"] == "suspended" for s in data["steps"].values())
        return data if "two" in output and suspended else None

    data = await wait_for(two_lines)
    assert "one" in "".join(data["output"].values())
    step = next(s for s in data["steps"].values() if s["state"] == "suspended")
    assert "Cancel step" in step["head"]
    # Only newer output after `after`; nothing at all while the version is unchanged.
    newer = (await env.client.get(f"/console/{plan_id}/live?after={data['after']}")).json()
    assert newer["output"] == {}
    same = (await env.client.get(f"/console/{plan_id}/live?v={newer['v']}")).json()
    assert same == {"v": newer["v"], "unchanged": True}
    assert await world.cancel(plan_id) == 1
    await wait_plan_state(world, plan_id)
    done = (await env.client.get(f"/console/{plan_id}/live")).json()
    assert done["state"] == "stopped" and done["live"] is False


# ---- actions and their protection -----------------------------------------------------------


async def test_resume_a_paused_plan(env: Env) -> None:
    world = env.world
    started = await world.trigger(Maintenance, always_fail=False)
    await wait_plan_state(world, started.id, "paused")
    path = f"/console/{started.id}"
    page = (await env.client.get(path)).text
    assert "Resume" in text_of(page)
    answer = await env.client.post(f"{path}/resume", data={"csrf_token": token_of(page)})
    assert answer.status_code == 303
    location = answer.headers["location"]
    assert location.startswith(f"{path}?")
    shown = await env.client.get(location)
    assert "Resumed: the plan is running again." in text_of(shown.text)
    plan = await wait_plan_state(world, started.id)
    assert plan.result == "success"
    # Resuming again: a notice, not an error page.
    again = await env.client.post(f"{path}/resume", data={"csrf_token": token_of(page)})
    text = text_of((await env.client.get(again.headers["location"])).text)
    assert "Not resumed: execution plan" in text and "has to be paused" in text


async def test_skip_a_failed_step_then_resume(env: Env) -> None:
    world = env.world
    started = await world.trigger(Maintenance, migrate=False)
    plan = await wait_plan_state(world, started.id, "paused")
    failed = next(s for s in plan.steps.values() if s.state == "error")
    path = f"/console/{started.id}"
    token = await form_token(env.client, path)
    answer = await env.client.post(f"{path}/skip/{failed.id}", data={"csrf_token": token})
    assert answer.status_code == 303
    text = text_of((await env.client.get(answer.headers["location"])).text)
    assert f"Step {failed.id} will be skipped. Resume the plan to go on." in text
    assert (await world.load_plan(started.id)).steps[failed.id].state == "skipping"
    # A step that did not fail cannot be skipped.
    ok_step = next(s.id for s in plan.steps.values() if s.state == "success")
    answer = await env.client.post(f"{path}/skip/{ok_step}", data={"csrf_token": token})
    assert "is not failed" in text_of((await env.client.get(answer.headers["location"])).text)
    await env.client.post(f"{path}/resume", data={"csrf_token": token})
    plan = await wait_plan_state(world, started.id)
    assert plan.result == "warning"


async def test_halt_a_running_plan(env: Env) -> None:
    world = env.world
    answer = await env.client.post("/tasks/launch", json=run_script({"script": "sleep 30"}))
    plan_id = answer.json()["task_id"]
    path = f"/console/{plan_id}"

    async def running() -> Any:
        page = (await env.client.get(path)).text
        return page if "Cancel step" in page else None

    page = await wait_for(running)
    assert 'data-action="halt"' in page
    answer = await env.client.post(f"{path}/halt", data={"csrf_token": token_of(page)})
    assert answer.status_code == 303
    text = text_of((await env.client.get(answer.headers["location"])).text)
    assert "Halted: the plan is stopped for good." in text
    plan = await world.load_plan(plan_id)
    assert plan.state == "stopped"
    # A stopped plan offers no Halt; unknown plans are 404 pages.
    assert 'data-action="halt"' not in (await env.client.get(path)).text
    token = token_of(page)
    assert (
        await env.client.post("/console/nope/halt", data={"csrf_token": token})
    ).status_code == 404


async def test_cancel_plan_and_step(env: Env) -> None:
    world = env.world
    answer = await env.client.post("/tasks/launch", json=run_script({"script": "sleep 30"}))
    plan_id = answer.json()["task_id"]
    path = f"/console/{plan_id}"

    async def cancellable() -> Any:
        page = (await env.client.get(path)).text
        return page if "Cancel step" in page else None

    page = await wait_for(cancellable)
    token = token_of(page)
    step_id = int(re.search(r'data-action="cancel-step" data-step="(\d+)"', page).group(1))
    answer = await env.client.post(f"{path}/cancel/{step_id}", data={"csrf_token": token})
    text = text_of((await env.client.get(answer.headers["location"])).text)
    assert f"Cancel sent to step {step_id}" in text
    plan = await wait_plan_state(world, plan_id)
    assert plan.state == "stopped"
    # Nothing left to cancel: notices say so.
    answer = await env.client.post(f"{path}/cancel", data={"csrf_token": token})
    text = text_of((await env.client.get(answer.headers["location"])).text)
    assert "Nothing to cancel" in text
    answer = await env.client.post(f"{path}/cancel/{step_id}", data={"csrf_token": token})
    text = text_of((await env.client.get(answer.headers["location"])).text)
    assert f"Step {step_id} cannot be cancelled" in text
    # Unknown plans and steps are 404 pages.
    assert (
        await env.client.post("/console/nope/cancel", data={"csrf_token": token})
    ).status_code == 404
    assert (
        await env.client.post(f"{path}/cancel/999", data={"csrf_token": token})
    ).status_code == 404
    assert (await env.client.post(f"{path}/skip/x", data={"csrf_token": token})).status_code == 404


async def test_forms_refuse_cross_site_requests(env: Env, tmp_path: Path) -> None:
    world = env.world
    started = await world.trigger(Maintenance, always_fail=False)
    await wait_plan_state(world, started.id, "paused")
    path = f"/console/{started.id}/resume"
    token = await form_token(env.client, f"/console/{started.id}")
    cases: list[tuple[dict[str, Any], dict[str, str], str]] = [
        ({}, {}, "security token is missing"),
        ({"csrf_token": "forged.0000"}, {}, "security token is invalid or expired"),
        ({"csrf_token": FormGuard().new_token()}, {}, "security token is invalid or expired"),
        ({"csrf_token": token}, {"Sec-Fetch-Site": "cross-site"}, "Refused a cross-site request"),
        ({"csrf_token": token}, {"Sec-Fetch-Site": "same-site"}, "Refused a same-site request"),
        (
            {"csrf_token": token},
            {"Origin": "https://evil.example.com"},
            "Refused a request from origin https://evil.example.com",
        ),
        ({"csrf_token": token}, {"Origin": "null"}, "Refused a request from origin null"),
    ]
    for data, headers, message in cases:
        answer = await env.client.post(path, data=data, headers=headers)
        assert answer.status_code == 403, (data, headers)
        assert message in text_of(answer.text)
    # A request without the cookie (another browser) is refused even with a valid token.
    async with httpx.AsyncClient(
        transport=env.client._transport, base_url="http://console.test"
    ) as stranger:
        answer = await stranger.post(path, data={"csrf_token": token})
        assert answer.status_code == 403
        assert "security token is missing" in text_of(answer.text)
    assert (await world.load_plan(started.id)).state == "paused"  # nothing happened
    # The same origin with the token and cookie works.
    answer = await env.client.post(
        path,
        data={"csrf_token": token},
        headers={"Origin": "http://console.test", "Sec-Fetch-Site": "same-origin"},
    )
    assert answer.status_code == 303
    await wait_plan_state(world, started.id)


async def test_cookie_and_security_headers(env: Env) -> None:
    async with httpx.AsyncClient(
        transport=env.client._transport, base_url="http://console.test"
    ) as fresh:
        answer = await fresh.get("/console")
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith(f"{CSRF_COOKIE}=")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
        assert "Secure" not in cookie  # plain HTTP
        assert answer.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
        assert answer.headers["cache-control"] == "no-store"
        # The cookie is kept (not re-issued) while valid.
        again = await fresh.get("/console")
        assert "set-cookie" not in again.headers


async def test_notices_must_be_signed(env: Env) -> None:
    plan_id = env.releases[0]
    forged = await env.client.get(
        f"/console/{plan_id}", params={"notice": "Your password expired", "level": "ok"}
    )
    assert "Your password expired" not in forged.text
    signed = FormGuard().sign_notice("ok", "Your password expired")
    forged = await env.client.get(
        f"/console/{plan_id}",
        params={"notice": "Your password expired", "level": "ok", "sig": signed},
    )
    assert "Your password expired" not in forged.text


async def test_other_methods_are_refused(env: Env) -> None:
    answer = await env.client.put(f"/console/{env.releases[0]}/resume")
    assert answer.status_code == 405
    assert "PUT is not accepted" in text_of(answer.text)


# ---- worlds, static files, access -------------------------------------------------------------


async def test_worlds_page_and_checks(env: Env) -> None:
    answer = await env.client.get("/console/status", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/console/worlds"
    page = (await env.client.get("/console/worlds")).text
    text = text_of(page)
    assert env.world.id in text and "this process" in text and "alive" in text
    assert "Queues of this process" in text
    assert re.search(r"default\s+5\s+\d+\s+\d+\s+\d+", text)
    token = token_of(page)
    answer = await env.client.post("/console/worlds/check", data={"csrf_token": token})
    assert answer.status_code == 303
    text = text_of((await env.client.get(answer.headers["location"])).text)
    assert "1 world(s): 1 alive, 0 gone." in text
    answer = await env.client.post(
        f"/console/worlds/{env.world.id}/check", data={"csrf_token": token}
    )
    text = text_of((await env.client.get(answer.headers["location"])).text)
    assert f"World {env.world.id} is alive." in text
    answer = await env.client.post(
        "/console/worlds/check?invalidate=true", data={"csrf_token": token}
    )
    text = text_of((await env.client.get(answer.headers["location"])).text)
    assert "Invalidated 0 world(s)" in text
    answer = await env.client.post("/console/worlds/nope/check", data={"csrf_token": token})
    assert answer.status_code == 404


async def test_a_dead_world_is_shown_and_invalidated(env: Env) -> None:
    store = env.world.store  # a record as a crashed process would leave it
    record = {"meta": {"hostname": "gone.example.com", "pid": 4242}, "last_seen_epoch": 0}
    lock = store.acquire_lock_stmt("ExecutorWorld", "dead-world", "world:dead-world", record)
    await store.write("dead-world", [lock])
    page = (await env.client.get("/console/worlds")).text
    row = text_of(page[page.index("dead-world") :].split("</tr>")[0])
    assert "gone.example.com 4242" in row and "gone" in row
    token = token_of(page)
    answer = await env.client.post("/console/worlds/dead-world/check", data={"csrf_token": token})
    text = text_of((await env.client.get(answer.headers["location"])).text)
    assert "World dead-world is gone (its heartbeat stopped)." in text
    answer = await env.client.post(
        "/console/worlds/dead-world/check?invalidate=true", data={"csrf_token": token}
    )
    text = text_of((await env.client.get(answer.headers["location"])).text)
    assert "World dead-world was gone: invalidated (1 world(s) in all)" in text
    assert "dead-world" not in text.replace("World dead-world was gone", "")
    answer = await env.client.post("/console/worlds/execution_status", data={"csrf_token": token})
    text = text_of((await env.client.get(answer.headers["location"])).text)
    assert "The queues of this process are shown below" in text


async def test_static_files_come_from_the_package(env: Env) -> None:
    page = (await env.client.get("/console")).text
    css = re.search(r'href="(/console/static/console\.css\?v=\w+)"', page).group(1)
    js = re.search(r'src="(/console/static/console\.js\?v=\w+)"', page).group(1)
    assert (await env.client.get(css)).headers["content-type"].startswith("text/css")
    script = await env.client.get(js)
    assert script.status_code == 200 and "setupLive" in script.text
    assert "http://" not in page and "https://" not in page  # no CDN, no absolute links


async def test_plain_http_is_refused_unless_console_http(env: Env) -> None:
    closed = create_app(env.core)  # the default: console_http false
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=closed), base_url="http://console.test"
    ) as client:
        for path in ("/console", f"/console/{env.releases[0]}", "/console/worlds"):
            answer = await client.get(path)
            assert answer.status_code == 403
            assert "The Dynflow console is not served over plain HTTP" in text_of(answer.text)
            assert "set console_http: true" in text_of(answer.text)
        answer = await client.post(f"/console/{env.releases[0]}/cancel")
        assert answer.status_code == 403
        # The task API itself is not affected.
        assert (await client.get("/tasks/count")).status_code == 200


async def test_planned_and_planning_failures_render(env: Env) -> None:
    world = env.world
    planned = await world.plan(AlwaysFails, path="/tmp")
    text = text_of((await env.client.get(f"/console/{planned.id}")).text)
    assert "State planned Result pending" in text
    assert "This plan has no finalize steps." in text
    broken = await world.trigger(Release, app="x")  # hosts missing: plan() raises
    assert not broken.planned
    answer = await env.client.get(f"/console/{broken.id}?tab=plan")
    assert answer.status_code == 200
    text = text_of(answer.text)
    assert "State stopped Result error" in text
    assert "TypeError" in text and "hosts" in text


async def test_scheduled_and_chained_plans(env: Env) -> None:
    world = env.world
    later = await world.delay(
        AlwaysFails, {"start_at": 3600, "start_before": 7200, "frozen": True}, path="/x"
    )
    chained = await world.chain(later.id, AlwaysFails, path="/y")
    text = text_of((await env.client.get(f"/console/{later.id}")).text)
    assert "State scheduled" in text
    assert re.search(r"Scheduled start at \S+ \S+, before \S+ \S+ UTC frozen", text)
    assert f"Blocks {chained.id[:8]}" in text
    text = text_of((await env.client.get(f"/console/{chained.id}")).text)
    assert f"Depends on {later.id[:8]}" in text
    listed = text_of((await env.client.get("/console", params={"state": "scheduled"})).text)
    assert later.id[:8] in listed and chained.id[:8] in listed
