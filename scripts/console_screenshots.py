#!/usr/bin/env python
"""Screenshots of the console for the README: ``docs/console-list.png`` and
``docs/console-plan.png``.

Starts a core with a throw-away SQLite file and the console over HTTP, fills it with a
realistic mix of plans (finished releases, a batch with sub-plans, a failed script, a paused
maintenance plan, a release deploying to three hosts whose output is still scrolling), then
takes the pictures with headless Chromium (Playwright, ``/usr/bin/chromium``).

Usage: ``.venv/bin/python scripts/console_screenshots.py [--out docs]``
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.console_actions import Maintenance, Release  # noqa: E402
from tests.support.local_command import register_test_actions  # noqa: E402
from tests.support.services import make_config, run_script, start_app  # noqa: E402

from smart_proxy.log import RequestLogMiddleware  # noqa: E402
from smart_proxy_dynflow.api import create_app  # noqa: E402
from smart_proxy_dynflow.console import ConsoleAccess  # noqa: E402
from smart_proxy_dynflow.core import Core  # noqa: E402

DEPLOY = (
    "echo '==> deploying web-2.4.1 to {host}'; "
    "for step in 'stopping service' 'unpacking web-2.4.1.tar.gz' 'migrating schema' "
    "'warming caches' 'starting service'; do echo \"[{host}] $step\"; sleep 0.2; done; "
    "echo 'W: 2 deprecated settings in /etc/web/app.conf' >&2; sleep 600"
)


async def populate(core: Core, url: str) -> str:
    import httpx

    world = core.world
    for app in ("billing", "inventory", "web"):
        done = await world.trigger(Release, app=app, hosts=["app1.example.com"])
        await done.wait(30)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        batch = {
            str(uuid.uuid4()): {
                "action_class": "Test::HelloWorld",
                "action_input": {"hostname": f"host{n}.example.com"},
            }
            for n in range(1, 6)
        }
        await client.post(
            "/tasks/launch", json={"operation": "local-batch", "input": batch, "options": {}}
        )
        await client.post(
            "/tasks/launch",
            json=run_script(
                {
                    "hostname": "db1.example.com",
                    "script": "echo 'checking /var'; df -h /var >/dev/null; "
                    "echo 'error: no space left on device' >&2; exit 28",
                }
            ),
        )
    await world.trigger(Maintenance)
    running = await world.trigger(
        Release,
        app="web",
        hosts=["web1.example.com", "web2.example.com", "web3.example.com"],
        deploy_script=DEPLOY,
    )
    await asyncio.sleep(2.5)
    return running.id


async def shoot(out: Path) -> None:
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory() as tmp:
        core = Core(make_config(f"sqlite+aiosqlite:///{tmp}/dynflow.sqlite"))
        register_test_actions(core)
        await core.start()
        app = RequestLogMiddleware(create_app(core, console=ConsoleAccess(console_http=True)))
        served = await start_app(app)
        try:
            plan_id = await populate(core, served.url)
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path="/usr/bin/chromium", args=["--no-sandbox"], headless=True
                )
                page = await browser.new_page(
                    viewport={"width": 1440, "height": 900}, device_scale_factor=1
                )
                await page.goto(served.url + "/console")
                await page.screenshot(path=str(out / "console-list.png"))
                await page.goto(f"{served.url}/console/{plan_id}")
                await page.wait_for_selector("pre.terminal >> text=starting service")
                await page.wait_for_timeout(300)
                await page.screenshot(path=str(out / "console-plan.png"), full_page=True)
                await browser.close()
        finally:
            await served.stop()
            await core.stop()
    print(f"wrote {out / 'console-list.png'} and {out / 'console-plan.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs"), help="directory for the PNG files")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    asyncio.run(shoot(out))


if __name__ == "__main__":
    main()
