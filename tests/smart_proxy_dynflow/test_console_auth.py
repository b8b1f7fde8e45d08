"""Who may open the console, over real HTTP and TLS sockets, in every deployment.

* the standalone core: over HTTPS with ``console_auth`` only the Smart Proxy's certificate
  (the serial check of ``smart-proxy-dynflow-core``) or a CN of its ``console_trusted_hosts``;
  plain HTTP only with ``console_http``;
* the Smart Proxy with the plugin in-process (``/dynflow/console``): over HTTPS a client
  certificate that passes ``trusted_hosts`` like the task API (a managed host's certificate of
  the same CA gets 403 on every page and action), or ``console_trusted_hosts`` instead when
  set; none → 403; plain HTTP only with ``console_http`` (and trusted hosts by reverse DNS);
  ``console_auth: false`` drops the checks;
* the relay: the proxy checks the browser (trusted hosts too), the core sees the proxy's
  certificate; links, redirects and cookies carry the ``/dynflow`` prefix; actions work
  through it.
"""

from __future__ import annotations

import contextlib
import html
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from smart_proxy.log import RequestLogMiddleware
from smart_proxy.tls import server_context
from smart_proxy_dynflow.api import create_app
from smart_proxy_dynflow.auth import SerialAuthorizer
from smart_proxy_dynflow.core import Core
from smart_proxy_dynflow.proxy_plugin import DynflowPlugin
from smart_proxy_dynflow.service import console_access
from smart_proxy_dynflow.settings import CoreSettings
from tests.support.certs import Pki, issue_client_certificate, make_pki
from tests.support.console_actions import Maintenance
from tests.support.local_command import register_test_actions
from tests.support.proxy import smart_proxy
from tests.support.services import Served, make_config, start_app
from tests.support.waiting import wait_plan_state

CERTS = ("proxy", "other", None)
# A managed host (its certificate from the proxy's CA, as with the Puppet CA) and an admin.
HOST_CN = "web01.example.com"
ADMIN_CN = "admin.example.com"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def client(pki: Pki, url: str, cert: str | None = "proxy") -> httpx.AsyncClient:
    """A browser presenting ``cert``: "proxy" (Foreman's, CN ``pki.client_cn``), "other", None,
    or any other CN (a certificate of the same CA issued for it)."""
    if cert == "proxy":
        files: tuple[str | None, str | None] = (pki.client_cert, pki.client_key)
    elif cert == "other":
        files = (pki.other_client_cert, pki.other_client_key)
    elif cert is None:
        files = (None, None)
    else:
        files = issue_client_certificate(pki, cert)
    if not url.startswith("https:"):
        return httpx.AsyncClient(base_url=url, timeout=30)
    context = pki.client_ssl_context(cert=files[0], key=files[1])
    return httpx.AsyncClient(base_url=url, verify=context, timeout=30)


def text_of(page: str) -> str:
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page))).strip()


async def get(pki: Pki, url: str, path: str, cert: str | None = "proxy") -> httpx.Response:
    async with client(pki, url, cert) as c:
        return await c.get(path)


def core_settings(pki: Pki, **values: Any) -> CoreSettings:
    return CoreSettings(
        use_https=True,
        ssl_certificate=pki.server_cert,
        ssl_private_key=pki.server_key,
        ssl_ca_file=pki.ca_cert,
        foreman_ssl_cert=pki.client_cert,
        foreman_ssl_key=pki.client_key,
        **values,
    )


@contextlib.asynccontextmanager
async def core_over_https(
    tmp_path: Path, pki: Pki, **settings: Any
) -> AsyncIterator[tuple[Core, Served]]:
    """The standalone core's app as ``smart-proxy-dynflow-core`` builds it, over HTTPS."""
    values = core_settings(pki, **settings)
    core = Core(make_config(f"sqlite+aiosqlite:///{tmp_path / 'core.sqlite'}"))
    register_test_actions(core)
    app = create_app(
        core, authorize=SerialAuthorizer(pki.client_serial), console=console_access(values)
    )
    await core.start()
    context = server_context(pki.server_cert, pki.server_key, pki.ca_cert)
    served = await start_app(RequestLogMiddleware(app), ssl_context=context)
    try:
        yield core, served
    finally:
        await served.stop()
        await core.stop()


async def test_standalone_core_over_https_accepts_only_the_proxy_certificate(
    tmp_path: Path, pki: Pki
) -> None:
    async with core_over_https(tmp_path, pki) as (_, served):
        answer = await get(pki, served.url, "/console")
        assert answer.status_code == 200
        assert "Plans" in text_of(answer.text)
        assert "Secure" in answer.headers["set-cookie"]
        answer = await get(pki, served.url, "/console", cert=None)
        assert answer.status_code == 403
        assert answer.headers["content-type"].startswith("text/html")
        assert "No client SSL certificate supplied" in text_of(answer.text)
        answer = await get(pki, served.url, "/console/worlds", cert="other")
        assert answer.status_code == 403
        assert "SSL certificate with unexpected serial supplied" in text_of(answer.text)
        # Static files carry nothing secret: served to anyone (the 403 page is styled).
        answer = await get(pki, served.url, "/console/static/console.css", cert=None)
        assert answer.status_code == 200


async def test_standalone_core_without_console_auth(tmp_path: Path, pki: Pki) -> None:
    async with core_over_https(tmp_path, pki, console_auth=False) as (_, served):
        assert (await get(pki, served.url, "/console", cert=None)).status_code == 200
        assert (await get(pki, served.url, "/console", cert="other")).status_code == 200


def test_console_http_setting() -> None:
    assert CoreSettings().console_http is False
    assert CoreSettings(console_http=True).console_http is True
    access = console_access(CoreSettings(console_http=True))
    assert access.console_http and access.console_auth and access.check_client is None
    assert DynflowPlugin.default_settings["console_http"] is False


@contextlib.asynccontextmanager
async def proxy_in_process(tmp_path: Path, pki: Pki, **dynflow: Any) -> AsyncIterator[Any]:
    settings = {"enabled": True, "database": f"sqlite+aiosqlite:///{tmp_path / 'p.sqlite'}"}
    async with smart_proxy(
        tmp_path / "proxy",
        [DynflowPlugin],
        {"dynflow": {**settings, **dynflow}},
        pki=pki,
        trusted_hosts=[pki.client_cn],
        foreman_url="http://127.0.0.1:9",
    ) as proxy:
        yield proxy


async def test_proxy_in_process_https_needs_a_client_certificate(tmp_path: Path, pki: Pki) -> None:
    async with proxy_in_process(tmp_path, pki) as proxy:
        https, http = proxy.https_url, proxy.http_url
        answer = await get(pki, https, "/dynflow/console")
        assert answer.status_code == 200
        assert 'href="/dynflow/console/worlds"' in answer.text
        assert "Path=/dynflow/console" in answer.headers["set-cookie"]
        # A certificate of the CA whose CN is not in trusted_hosts: refused like the task API.
        answer = await get(pki, https, "/dynflow/console", cert="other")
        assert answer.status_code == 403
        assert "Untrusted client other.example.com" in text_of(answer.text)
        assert (await get(pki, https, "/dynflow/tasks/count", cert="other")).status_code == 403
        answer = await get(pki, https, "/dynflow/console/worlds", cert=None)
        assert answer.status_code == 403
        assert "No client SSL certificate supplied" in text_of(answer.text)
        # Plain HTTP: refused (console_http is off by default), with what to do.
        answer = await get(pki, http, "/dynflow/console")
        assert answer.status_code == 403
        text = text_of(answer.text)
        assert "not served over plain HTTP" in text
        assert "console_http: true in settings.d/dynflow.yml" in text


async def test_proxy_console_http_and_console_auth_off(tmp_path: Path, pki: Pki) -> None:
    async with proxy_in_process(tmp_path, pki, console_http=True, console_auth=False) as proxy:
        assert (await get(pki, proxy.http_url, "/dynflow/console")).status_code == 200
        answer = await get(pki, proxy.https_url, "/dynflow/console", cert=None)
        assert answer.status_code == 200


async def test_proxy_in_process_action_over_https(tmp_path: Path, pki: Pki) -> None:
    async with proxy_in_process(tmp_path, pki) as proxy:
        core = proxy.plugin("dynflow").core
        started = await core.world.trigger(Maintenance, always_fail=False)
        await wait_plan_state(core.world, started.id, "paused")
        async with client(pki, proxy.https_url) as browser:
            page = await browser.get(f"/dynflow/console/{started.id}")
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
            answer = await browser.post(
                f"/dynflow/console/{started.id}/resume", data={"csrf_token": token}
            )
            assert answer.status_code == 303
            assert answer.headers["location"].startswith(f"/dynflow/console/{started.id}?")
            shown = await browser.get(answer.headers["location"])
            assert "Resumed: the plan is running again." in text_of(shown.text)
        assert (await wait_plan_state(core.world, started.id)).result == "success"


async def test_relay_forwards_the_console(tmp_path: Path, pki: Pki) -> None:
    async with core_over_https(tmp_path, pki) as (core, served):
        started = await core.world.trigger(Maintenance, always_fail=False)
        await wait_plan_state(core.world, started.id, "paused")
        relay = {
            "enabled": True,
            "external_core": True,
            "core_url": served.url,
        }
        async with smart_proxy(
            tmp_path / "proxy",
            [DynflowPlugin],
            {"dynflow": relay},
            pki=pki,
            foreman_url="http://127.0.0.1:9",
            foreman_ssl_ca=pki.ca_cert,
            foreman_ssl_cert=pki.client_cert,
            foreman_ssl_key=pki.client_key,
        ) as proxy:
            https = proxy.https_url
            # The proxy checks the browser...
            answer = await get(pki, https, "/dynflow/console", cert=None)
            assert answer.status_code == 403
            assert "No client SSL certificate supplied" in text_of(answer.text)
            answer = await get(pki, proxy.http_url, "/dynflow/console")
            assert answer.status_code == 403 and "plain HTTP" in text_of(answer.text)
            # ...the core sees the proxy's certificate: "other" gets through the relay.
            async with client(pki, https, cert="other") as browser:
                page = await browser.get("/dynflow/console")
                assert page.status_code == 200
                assert started.id[:8] in page.text
                assert 'href="/dynflow/console/worlds"' in page.text
                assert "/dynflow/console/static/console.css" in page.text
                assert "Path=/dynflow/console" in page.headers["set-cookie"]
                assert "Secure" in page.headers["set-cookie"]
                assert page.headers["x-frame-options"] == "DENY"
                css = await browser.get(
                    re.search(r'href="(/dynflow/console/static/[^"]+)"', page.text).group(1)
                )
                assert css.status_code == 200
                assert css.headers["content-type"].startswith("text/css")
                plan = await browser.get(f"/dynflow/console/{started.id}")
                token = re.search(r'name="csrf_token" value="([^"]+)"', plan.text).group(1)
                answer = await browser.post(
                    f"/dynflow/console/{started.id}/resume",
                    data={"csrf_token": token},
                    headers={"Origin": https, "Sec-Fetch-Site": "same-origin"},
                )
                assert answer.status_code == 303, answer.text
                location = answer.headers["location"]
                assert location.startswith(f"/dynflow/console/{started.id}?")
                shown = await browser.get(location)
                assert "Resumed: the plan is running again." in text_of(shown.text)
                # A forged cross-site POST is refused by the core, through the relay.
                forged = await browser.post(
                    f"/dynflow/console/{started.id}/cancel",
                    data={"csrf_token": token},
                    headers={"Origin": "https://evil.example.com"},
                )
                assert forged.status_code == 403
                assert "Refused a request from origin" in text_of(forged.text)
            assert (await wait_plan_state(core.world, started.id)).result == "success"


# ---- trusted hosts ------------------------------------------------------------------------------


def console_requests(plan_id: str, world_id: str) -> list[tuple[str, str]]:
    """Every console page and action (method, path below the console's prefix)."""
    pages = [
        "",
        "/",
        "/status",
        "/worlds",
        f"/{plan_id}",
        f"/{plan_id}?tab=plan",
        f"/{plan_id}/live",
        f"/{plan_id}/actions/1/sub_plans",
        f"/{plan_id}/actions/1/output.txt",
        "/no/such/page",
    ]
    actions = [
        "/worlds/check",
        "/worlds/check?invalidate=true",
        "/worlds/execution_status",
        f"/worlds/{world_id}/check",
        f"/{plan_id}/resume",
        f"/{plan_id}/cancel",
        f"/{plan_id}/halt",
        f"/{plan_id}/skip/1",
        f"/{plan_id}/cancel/1",
    ]
    return [("GET", path) for path in pages] + [("POST", path) for path in actions]


async def form_token(browser: httpx.AsyncClient, path: str) -> str:
    page = await browser.get(path)
    assert page.status_code == 200, page.text
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


async def assert_console_closed(
    pki: Pki,
    url: str,
    prefix: str,
    cert: str | None,
    token: str,
    plan_id: str,
    world_id: str,
    reason: str,
) -> None:
    """``cert`` gets 403 on every console page and action, even with a valid form token."""
    async with client(pki, url, cert) as browser:
        browser.cookies.set("dynflow_console_csrf", token)
        for method, path in console_requests(plan_id, world_id):
            answer = await browser.request(
                method,
                prefix + path,
                data={"csrf_token": token} if method == "POST" else None,
            )
            assert answer.status_code == 403, (method, path, answer.text[:300])
            shown = text_of(answer.text)
            assert "Access denied" in shown and reason in shown, (method, path, shown)
            assert plan_id not in answer.text.replace(f"/{plan_id}", "")


async def test_proxy_console_refuses_a_managed_host_on_every_page_and_action(
    tmp_path: Path, pki: Pki
) -> None:
    """A managed host's certificate (same CA, CN not in trusted_hosts) could read every job
    and halt plans; now it gets 403 everywhere, and Foreman's certificate still gets in."""
    async with proxy_in_process(tmp_path, pki) as proxy:
        core = proxy.plugin("dynflow").core
        started = await core.world.trigger(Maintenance, always_fail=False)
        await wait_plan_state(core.world, started.id, "paused")
        https = proxy.https_url
        async with client(pki, https) as foreman:
            token = await form_token(foreman, f"/dynflow/console/{started.id}")
            await assert_console_closed(
                pki,
                https,
                "/dynflow/console",
                HOST_CN,
                token,
                started.id,
                core.world.id,
                f"Untrusted client {HOST_CN}",
            )
            # Nothing the host posted took effect: the plan is still paused, not halted.
            assert (await core.world.load_plan(started.id)).state == "paused"
            for path in ("/dynflow/console", "/dynflow/console/worlds"):
                assert (await foreman.get(path)).status_code == 200
            answer = await foreman.post(
                f"/dynflow/console/{started.id}/resume", data={"csrf_token": token}
            )
            assert answer.status_code == 303
        assert (await wait_plan_state(core.world, started.id)).result == "success"


async def test_proxy_console_trusted_hosts_replace_trusted_hosts_for_the_console(
    tmp_path: Path, pki: Pki
) -> None:
    async with proxy_in_process(tmp_path, pki, console_trusted_hosts=[ADMIN_CN.upper()]) as proxy:
        https = proxy.https_url
        # The admin opens the console, but not the task API (trusted_hosts is Foreman's).
        assert (await get(pki, https, "/dynflow/console", cert=ADMIN_CN)).status_code == 200
        assert (await get(pki, https, "/dynflow/tasks/count", cert=ADMIN_CN)).status_code == 403
        # Foreman keeps the task API; the console list replaces trusted_hosts for the console.
        assert (await get(pki, https, "/dynflow/tasks/count")).status_code == 200
        answer = await get(pki, https, "/dynflow/console")
        assert answer.status_code == 403
        assert ":console_trusted_hosts: in settings.d/dynflow.yml" in text_of(answer.text)
        answer = await get(pki, https, "/dynflow/console/worlds", cert=HOST_CN)
        assert answer.status_code == 403
        assert f"Untrusted client {HOST_CN}" in text_of(answer.text)


async def test_proxy_console_over_http_applies_trusted_hosts_like_the_task_api(
    tmp_path: Path, pki: Pki
) -> None:
    """Over plain HTTP (console_http) the client is its reverse-DNS name, as for the task API:
    127.0.0.1 is not proxy.example.com, so both refuse it."""
    async with proxy_in_process(tmp_path, pki, console_http=True) as proxy:
        http = proxy.http_url
        api = await get(pki, http, "/dynflow/tasks/count")
        console = await get(pki, http, "/dynflow/console")
        assert api.status_code == 403
        assert console.status_code == 403
        assert api.json()["error"].split(" attempted")[0] in text_of(console.text)


async def test_relay_console_honours_the_proxy_trusted_hosts(tmp_path: Path, pki: Pki) -> None:
    async with core_over_https(tmp_path, pki) as (core, served):
        started = await core.world.trigger(Maintenance, always_fail=False)
        await wait_plan_state(core.world, started.id, "paused")
        relay = {"enabled": True, "external_core": True, "core_url": served.url}
        async with smart_proxy(
            tmp_path / "proxy",
            [DynflowPlugin],
            {"dynflow": relay},
            pki=pki,
            trusted_hosts=[pki.client_cn],
            foreman_url="http://127.0.0.1:9",
            foreman_ssl_ca=pki.ca_cert,
            foreman_ssl_cert=pki.client_cert,
            foreman_ssl_key=pki.client_key,
        ) as proxy:
            https = proxy.https_url
            async with client(pki, https) as foreman:
                token = await form_token(foreman, f"/dynflow/console/{started.id}")
                await assert_console_closed(
                    pki,
                    https,
                    "/dynflow/console",
                    HOST_CN,
                    token,
                    started.id,
                    core.world.id,
                    f"Untrusted client {HOST_CN}",
                )
                assert (await core.world.load_plan(started.id)).state == "paused"
                answer = await foreman.post(
                    f"/dynflow/console/{started.id}/resume",
                    data={"csrf_token": token},
                    headers={"Origin": https, "Sec-Fetch-Site": "same-origin"},
                )
                assert answer.status_code == 303, answer.text
        assert (await wait_plan_state(core.world, started.id)).result == "success"
        relay["console_trusted_hosts"] = [ADMIN_CN]
        async with smart_proxy(
            tmp_path / "proxy2",
            [DynflowPlugin],
            {"dynflow": relay},
            pki=pki,
            trusted_hosts=[pki.client_cn],
            foreman_url="http://127.0.0.1:9",
            foreman_ssl_ca=pki.ca_cert,
            foreman_ssl_cert=pki.client_cert,
            foreman_ssl_key=pki.client_key,
        ) as proxy:
            https = proxy.https_url
            answer = await get(pki, https, f"/dynflow/console/{started.id}", cert=ADMIN_CN)
            assert answer.status_code == 200 and started.id in answer.text
            assert (await get(pki, https, "/dynflow/console")).status_code == 403
            assert (await get(pki, https, "/dynflow/tasks/count")).status_code == 200


async def test_standalone_core_console_trusted_hosts(tmp_path: Path, pki: Pki) -> None:
    async with core_over_https(tmp_path, pki, console_trusted_hosts=[ADMIN_CN]) as (_, served):
        # The admin's certificate opens the console directly, not the task API.
        assert (await get(pki, served.url, "/console", cert=ADMIN_CN)).status_code == 200
        assert (await get(pki, served.url, "/tasks/count", cert=ADMIN_CN)).status_code == 403
        # The Smart Proxy's own certificate (the relay) still does.
        assert (await get(pki, served.url, "/console")).status_code == 200
        answer = await get(pki, served.url, "/console/worlds", cert=HOST_CN)
        assert answer.status_code == 403
        assert f"{HOST_CN} is neither the Smart Proxy nor in console_trusted_hosts" in text_of(
            answer.text
        )
        answer = await get(pki, served.url, "/console", cert=None)
        assert answer.status_code == 403
        assert "No client SSL certificate supplied" in text_of(answer.text)


def test_console_trusted_hosts_settings() -> None:
    assert CoreSettings().console_trusted_hosts is None
    assert CoreSettings(console_trusted_hosts="Admin.Example.com").console_trusted_hosts == [
        "admin.example.com"
    ]
    with pytest.raises(ValueError, match="console_trusted_hosts has an empty entry"):
        CoreSettings(console_trusted_hosts=["admin.example.com", " "])
    with pytest.raises(ValueError, match="console_trusted_hosts"):
        CoreSettings(console_trusted_hosts={"admin": 1})
