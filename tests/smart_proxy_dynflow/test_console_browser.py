"""The console in a real browser: headless Chromium driven by Playwright.

One core serves the console over HTTP on a real socket for the whole module (``console_http``
on) and one browser opens it. The tests click through what an operator does: filter and search
the list, open a plan and read its flow, watch a running command's output appear without a
reload and cancel it, resume a paused plan, skip a failed step; and read a plan with
JavaScript off.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from smart_proxy.log import RequestLogMiddleware
from smart_proxy_dynflow.api import create_app
from smart_proxy_dynflow.console import ConsoleAccess
from smart_proxy_dynflow.core import Core
from tests.support.console_actions import SECRET, Maintenance, Release
from tests.support.local_command import register_test_actions
from tests.support.services import Served, make_config, run_script, start_app
from tests.support.waiting import wait_plan_state

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHROMIUM = "/usr/bin/chromium"
TIMEOUT = 15_000  # ms, for expectations that wait on the engine

assert Path(CHROMIUM).exists(), "Chromium is missing: `make test` installs Debian's chromium"


@dataclass
class Site:
    core: Core
    served: Served
    browser: Browser
    releases: list[str]
    failed: str

    @property
    def url(self) -> str:
        return self.served.url

    @property
    def world(self) -> Any:
        return self.core.world

    async def launch(self, script: str) -> str:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            answer = await client.post("/tasks/launch", json=run_script({"script": script}))
            return str(answer.json()["task_id"])


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    path = tmp_path_factory.mktemp("console-browser") / "dynflow.sqlite"
    core = Core(make_config(f"sqlite+aiosqlite:///{path}"))
    register_test_actions(core)
    await core.start()
    app = RequestLogMiddleware(create_app(core, console=ConsoleAccess(console_http=True)))
    served = await start_app(app)
    releases = []
    for name in ("billing", "inventory"):
        done = await core.world.trigger(Release, app=name, hosts=["a.example.com", "b"])
        await done.wait(10)
        releases.append(done.id)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox"], headless=True
        )
        site = Site(core, served, browser, releases, "")
        site.failed = await site.launch("echo 'checking disk'; exit 28")
        await wait_plan_state(core.world, site.failed)
        try:
            yield site
        finally:
            await browser.close()
            await served.stop()
            await core.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def page(site: Site) -> AsyncIterator[Page]:
    context = await site.browser.new_context(base_url=site.url)
    context.set_default_timeout(TIMEOUT)
    tab = await context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    # Console errors include refused resources and Content-Security-Policy violations.
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield tab
    await context.close()
    assert not errors, f"errors in the browser: {errors}"


async def confirm(page: Page, button: Any) -> None:
    """Click an action button and confirm in the console's dialog."""
    await button.click()
    dialog = page.locator("#confirm-dialog")
    await expect(dialog).to_be_visible()
    await dialog.get_by_role("button", name="Confirm").click()


async def test_list_filter_and_search(site: Site, page: Page) -> None:
    await page.goto("/console")
    await expect(page.locator("h1")).to_have_text("Plans")
    rows = page.locator("table#plans tbody tr")
    total = await site.world.count_plans()
    await expect(page.locator(".chips .chip").first).to_have_text(f"all {total}")
    await expect(rows).to_have_count(total)
    # One click on a result's count shows only those plans.
    await page.locator('.chips a[data-result-count="error"]').click()
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text(site.failed[:8])
    await expect(rows.first.locator(".badge").last).to_have_text("error")
    assert "result=error" in page.url
    # Search over labels (any case) and ids.
    await page.goto("/console")
    await page.locator("#search").fill("console_actions.RELEASE")
    await page.locator("#search").press("Enter")
    await expect(rows).to_have_count(2)
    await expect(page.locator("table#plans")).to_contain_text(site.releases[0][:8])
    await page.locator("#search").fill(site.releases[1][:7])
    await page.locator("#search").press("Enter")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text(site.releases[1][:8])
    # Filters apply as soon as a box is ticked (JavaScript), ordering by a header link.
    await page.goto("/console")
    await page.locator("details.filters summary").click()
    await page.locator('#filter-form input[name="state"][value="stopped"]').check()
    await page.wait_for_url(re.compile(r"state=stopped"))
    await page.get_by_role("link", name="Label").click()
    await page.wait_for_url(re.compile(r"order=label"))
    labels = await page.locator("table#plans td.label").all_inner_texts()
    assert labels == sorted(labels)


async def test_open_a_plan_and_read_its_flow(site: Site, page: Page) -> None:
    await page.goto(f"/console?q={site.releases[0][:8]}")
    await page.locator("table#plans td.label a").first.click()
    await page.wait_for_url(f"**/console/{site.releases[0]}")
    await expect(page.locator("h1")).to_have_text("tests.support.console_actions.Release")
    await expect(page.locator(".plan-status .badge").first).to_have_text("stopped")
    run = page.locator("#tab-run")
    await expect(run.locator(".flow-concurrence")).to_have_count(2)
    await expect(run.locator(".flow-concurrence").first).to_contain_text("concurrently · 3")
    lanes = run.locator(".flow-concurrence").first.locator(".flow-lane")
    await expect(lanes).to_have_count(3)
    await expect(lanes.nth(0)).to_contain_text("UnitTests")
    # A chunk of Checkout's output, shown as output.
    await expect(run.locator("pre.terminal").first).to_contain_text("fetched: origin/main")
    # The details of a step: input with its password filtered, output with the token filtered.
    publish = run.locator(".step", has_text="Publish")
    await publish.locator("summary", has_text="Details").click()
    details = publish.locator(".step-info")
    await expect(details).to_be_visible()
    await expect(details).to_contain_text("password: '[FILTERED]'")
    await expect(details).to_contain_text("upload_token: '[FILTERED]'")
    assert SECRET not in await page.content()
    # Tabs switch in place; the URL follows.
    await page.locator('.tabs a[data-tab="plan"]').click()
    await expect(page.locator("#tab-plan")).to_be_visible()
    await expect(run).to_be_hidden()
    await expect(page.locator("#tab-plan .tree-children").first).to_contain_text("Compile")
    assert "tab=plan" in page.url
    await page.locator('.tabs a[data-tab="history"]').click()
    await expect(page.locator("#tab-history")).to_contain_text("finish execution")


async def test_live_output_of_a_running_command_then_cancel(site: Site, page: Page) -> None:
    script = "for i in 1 2 3 4 5 6; do echo line-$i; sleep 0.25; done; sleep 60"
    plan_id = await site.launch(script)
    await page.goto(f"/console/{plan_id}")
    await page.evaluate("window.__notReloaded = true")
    terminal = page.locator("pre.terminal")
    await expect(terminal).to_contain_text("line-6")  # appeared while we watched
    await expect(terminal).to_contain_text("line-1")
    assert await page.evaluate("window.__notReloaded === true")
    assert (await terminal.inner_text()).count("line-3") == 1  # appended once each
    await expect(page.locator(".step.state-suspended .badge")).to_have_text("suspended")
    await expect(page.locator(".plan-status .live-dot")).to_be_visible()
    await confirm(page, page.get_by_role("button", name="Cancel plan"))
    await expect(page.locator("#notice")).to_have_text("Cancel sent to 1 step.")
    # The page (reloaded by the redirect) follows the plan to its end by itself.
    await expect(page.locator(".plan-status .badge").first).to_have_text("stopped")
    await expect(page.locator(".plan-status .live-dot")).to_have_count(0)
    assert (await site.world.load_plan(plan_id)).state == "stopped"


async def test_resume_a_paused_plan(site: Site, page: Page) -> None:
    started = await site.world.trigger(Maintenance, always_fail=False)
    await wait_plan_state(site.world, started.id, "paused")
    await page.goto(f"/console/{started.id}")
    await expect(page.locator(".plan-status .badge").first).to_have_text("paused")
    failures = page.locator("#failures")
    await expect(failures).to_contain_text("1 failed step")
    await expect(failures).to_contain_text("ConnectionError")
    await expect(page.locator(".step.state-error")).to_contain_text("refused the connection")
    await confirm(page, page.get_by_role("button", name="Resume"))
    await expect(page.locator("#notice")).to_have_text("Resumed: the plan is running again.")
    await expect(page.locator(".plan-status .badge").first).to_have_text("stopped")
    await expect(page.locator(".plan-status .badge").nth(1)).to_have_text("success")
    await expect(failures).to_be_empty()


async def test_skip_a_failed_step(site: Site, page: Page) -> None:
    started = await site.world.trigger(Maintenance, migrate=False)
    await wait_plan_state(site.world, started.id, "paused")
    await page.goto(f"/console/{started.id}")
    failures = page.locator("#failures")
    await expect(failures).to_contain_text("AlwaysFails")
    await expect(failures).to_contain_text("disk /var is full (password=[FILTERED])")
    await confirm(page, failures.get_by_role("button", name="Skip"))
    await expect(page.locator("#notice")).to_contain_text("will be skipped")
    await expect(page.locator(".step.state-skipping")).to_have_count(1)
    await confirm(page, page.get_by_role("button", name="Resume"))
    await expect(page.locator(".plan-status .badge").nth(1)).to_have_text("warning")
    await expect(page.locator(".step.state-skipped")).to_have_count(2)  # and what used it
    plan = await site.world.load_plan(started.id)
    assert (plan.state, plan.result) == ("stopped", "warning")


async def test_keep_dialog_changes_nothing(site: Site, page: Page) -> None:
    started = await site.world.trigger(Maintenance, always_fail=False)
    await wait_plan_state(site.world, started.id, "paused")
    await page.goto(f"/console/{started.id}")
    await page.get_by_role("button", name="Resume").click()
    await page.locator("#confirm-dialog").get_by_role("button", name="Keep").click()
    await expect(page.locator("#confirm-dialog")).to_be_hidden()
    await expect(page.locator("#notice")).to_have_count(0)
    assert (await site.world.load_plan(started.id)).state == "paused"


async def test_reading_works_without_javascript(site: Site) -> None:
    context = await site.browser.new_context(base_url=site.url, java_script_enabled=False)
    try:
        page = await context.new_page()
        await page.goto("/console")
        await page.locator("table#plans td.label a", has_text="Release").first.click()
        await expect(page.locator("#tab-run .flow-concurrence").first).to_be_visible()
        await page.locator('.tabs a[data-tab="plan"]').click()  # a link: reloads
        await page.wait_for_url(re.compile(r"tab=plan"))
        await expect(page.locator("#tab-plan")).to_be_visible()
        await expect(page.locator("#tab-run")).to_be_hidden()
        step = page.locator("#tab-plan .step").first
        await step.locator("summary", has_text="Details").first.click()  # native <details>
        await expect(step.locator(".step-info").first).to_contain_text("Input")
        await page.goto(f"/console/{uuid.uuid4()}")
        await expect(page.locator("h1")).to_contain_text("Not found")
    finally:
        await context.close()
