"""Who may open the console, over real HTTP and TLS sockets, in every deployment.

* the standalone core: over HTTPS with ``console_auth`` only the Smart Proxy's certificate
  (the serial check of ``smart-proxy-dynflow-core``); plain HTTP only with ``console_http``;
* the Smart Proxy with the plugin in-process (``/dynflow/console``): over HTTPS any client
  certificate of the CA (no trusted-hosts check, as the original), none → 403; plain HTTP only
  with ``console_http``; ``console_auth: false`` drops the certificate check;
* the relay: the proxy checks the browser, the core sees the proxy's certificate; links,
  redirects and cookies carry the ``/dynflow`` prefix; actions work through it.
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
from tests.support.certs import Pki, make_pki
from tests.support.console_actions import Maintenance
from tests.support.local_command import register_test_actions
from tests.support.proxy import smart_proxy
from tests.support.services import Served, make_config, start_app
from tests.support.waiting import wait_plan_state

CERTS = ("proxy", "other", None)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def client(pki: Pki, url: str, cert: str | None = "proxy") -> httpx.AsyncClient:
    files = {
        "proxy": (pki.client_cert, pki.client_key),
        "other": (pki.other_client_cert, pki.other_client_key),
        None: (None, None),
    }[cert]
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
    assert access.console_http and access.console_auth and access.check_certificate is None
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
        # Any certificate of the CA: the console does not apply trusted_hosts (the task API
        # does).
        assert (await get(pki, https, "/dynflow/console", cert="other")).status_code == 200
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
