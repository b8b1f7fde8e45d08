"""The dynflow plugin inside the Smart Proxy: in-process and relay, over real HTTP and TLS.

Every deployment gets the same authorization matrix (§2, CVE-2018-14643: nothing under
``/dynflow`` is unprotected): HTTP and HTTPS, no client certificate, a certificate of another
CA, a CN outside ``trusted_hosts``, a trusted CN, ``trusted_hosts: []``, and the token paths
with a good, wrong, reused and missing one-time password.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from smart_proxy.root import LogsPlugin
from smart_proxy.tls import server_context
from smart_proxy_dynflow.auth import SerialAuthorizer
from smart_proxy_dynflow.core import Core
from smart_proxy_dynflow.otp import OtpManager
from smart_proxy_dynflow.proxy_plugin import DynflowPlugin
from tests.support.certs import Pki, make_pki
from tests.support.local_command import LocalCommandProxyPlugin, WaitForEvent
from tests.support.proxy import ProxyService, smart_proxy
from tests.support.services import core_service, free_port, make_config, run_script
from tests.support.waiting import wait_for, wait_plan_state

DEPLOYMENTS = ["in-process", "relay"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class Deployment:
    kind: str
    proxy: ProxyService
    core: Core
    pki: Pki

    def client(self, https: bool = True, cert: str | None = "proxy") -> httpx.AsyncClient:
        if not https:
            return httpx.AsyncClient(base_url=self.proxy.http_url, timeout=30)
        pki = self.pki
        files = {
            "proxy": (pki.client_cert, pki.client_key),
            "other": (pki.other_client_cert, pki.other_client_key),
            "foreign": (pki.foreign_client_cert, pki.foreign_client_key),
            None: (None, None),
        }[cert]
        context = pki.client_ssl_context(cert=files[0], key=files[1])
        assert self.proxy.https_url is not None
        return httpx.AsyncClient(base_url=self.proxy.https_url, verify=context, timeout=30)


@contextlib.asynccontextmanager
async def deploy(
    kind: str,
    tmp_path: Path,
    pki: Pki,
    foreman_url: str,
    *,
    trusted_hosts: list[str] | None = None,
) -> AsyncIterator[Deployment]:
    database = f"sqlite+aiosqlite:///{tmp_path / f'{kind}.sqlite'}"
    proxy_settings: dict[str, Any] = {
        "pki": pki,
        "foreman_url": foreman_url,
        "foreman_ssl_ca": pki.ca_cert,
        "foreman_ssl_cert": pki.client_cert,
        "foreman_ssl_key": pki.client_key,
        "trusted_hosts": trusted_hosts,
    }
    dynflow = {"enabled": True, "database": database, "runner_refresh_interval": 0.05}
    if kind == "in-process":
        async with smart_proxy(
            tmp_path / "proxy",
            [DynflowPlugin, LocalCommandProxyPlugin],
            {"dynflow": dynflow, "local_command": {"enabled": True}},
            **proxy_settings,
        ) as proxy:
            core = proxy.plugin("dynflow").core
            yield Deployment(kind, proxy, core, pki)
        return
    # Relay: a standalone core over HTTPS accepting only the proxy's certificate serial.
    context = server_context(pki.server_cert, pki.server_key, pki.ca_cert)
    async with core_service(
        make_config(database, foreman_url),
        authorize=SerialAuthorizer(pki.client_serial),
        ssl_context=context,
        client_kwargs={"verify": pki.client_ssl_context(cert=pki.client_cert, key=pki.client_key)},
    ) as svc:
        relay = {"enabled": True, "external_core": True, "core_url": svc.url}
        async with smart_proxy(
            tmp_path / "proxy", [DynflowPlugin], {"dynflow": relay}, **proxy_settings
        ) as proxy:
            yield Deployment(kind, proxy, svc.core, pki)


@pytest.fixture(params=DEPLOYMENTS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def status_code(client: httpx.AsyncClient, method: str, path: str, **kw: Any) -> int:
    async with client:
        return (await client.request(method, path, **kw)).status_code


async def test_without_trusted_hosts_https_needs_a_client_certificate(kind, tmp_path, pki, foreman):
    async with deploy(kind, tmp_path, pki, foreman.url) as d:
        assert await status_code(d.client(https=False), "GET", "/dynflow/tasks/count") == 200
        assert await status_code(d.client(), "GET", "/dynflow/tasks/count") == 200
        async with d.client(cert=None) as client:
            response = await client.get("/dynflow/tasks/count")
            assert response.status_code == 403
            assert response.json() == {"error": "No client SSL certificate supplied"}
        with pytest.raises((httpx.ConnectError, httpx.ReadError, ssl.SSLError)):
            async with d.client(cert="foreign") as client:
                response = await client.get("/dynflow/tasks/count")
                raise httpx.ReadError(f"answered {response.status_code}")  # TLS 1.3: late refusal


async def test_trusted_hosts_by_certificate_cn(kind, tmp_path, pki, foreman):
    async with deploy(kind, tmp_path, pki, foreman.url, trusted_hosts=[pki.client_cn]) as d:
        assert await status_code(d.client(), "GET", "/dynflow/tasks/count") == 200
        async with d.client(cert="other") as client:
            response = await client.post(
                "/dynflow/tasks/launch", json=run_script({"script": "true"})
            )
            assert response.status_code == 403
            assert "Untrusted client other.example.com" in response.json()["error"]
        # Over HTTP the client is 127.0.0.1, i.e. "localhost": not trusted.
        assert await status_code(d.client(https=False), "GET", "/dynflow/tasks/count") == 403
        assert await d.core.world.count_plans() == 0


async def test_empty_trusted_hosts_denies_everyone(kind, tmp_path, pki, foreman):
    async with deploy(kind, tmp_path, pki, foreman.url, trusted_hosts=[]) as d:
        for https in (True, False):
            for method, path in (
                ("GET", "/dynflow/tasks/count"),
                ("GET", "/dynflow/tasks/operations"),
                ("POST", "/dynflow/tasks/status"),
                ("GET", "/dynflow/tasks/00000000-0000-0000-0000-000000000000/status"),
                ("POST", "/dynflow/tasks/00000000-0000-0000-0000-000000000000/cancel"),
                ("POST", "/dynflow/tasks/00000000-0000-0000-0000-000000000000/done"),
            ):
                code = await status_code(d.client(https=https), method, path, json={})
                assert code == 403, (https, method, path)


async def waiting_task(core: Core) -> str:
    triggered = await core.world.trigger(WaitForEvent, {"finish": False})

    async def suspended() -> Any:
        plan = await core.world.load_plan(triggered.id)
        return plan and plan.steps[2].state == "suspended"

    await wait_for(suspended)
    return triggered.id


async def test_token_paths(kind, tmp_path, pki, foreman):
    # Nobody is trusted, and over HTTPS without a certificate: only a good token gets in.
    async with deploy(kind, tmp_path, pki, foreman.url, trusted_hosts=[]) as d:
        task_id = await waiting_task(d.core)
        password = d.core.otp.generate(task_id)
        good = {"Authorization": "Basic " + OtpManager.tokenize(task_id, password)}
        wrong = {"Authorization": "Basic " + OtpManager.tokenize(task_id, "wrong")}
        body = {"step_id": 2, "finish": False}
        base = f"/dynflow/tasks/{task_id}"
        async with d.client(cert=None) as client:
            assert (await client.post(f"{base}/update", json=body, headers=good)).status_code == 200
            response = await client.post(f"{base}/update", json=body, headers=wrong)
            assert response.status_code == 403
            assert response.json() == {"error": "Invalid username or password supplied"}
            missing = await client.post(f"{base}/update", json=body)
            assert missing.status_code == 403
            assert missing.json() == {"error": "No client SSL certificate supplied"}
            done = await client.post(f"{base}/done", json={"step_id": 2}, headers=good)
            assert done.status_code == 200
            reused = await client.post(f"{base}/done", json={"step_id": 2}, headers=good)
            assert reused.status_code == 403
        plan = await wait_plan_state(d.core.world, task_id)
        assert len(plan.actions[1].output["events"]) == 2


async def test_a_job_end_to_end_through_the_proxy(kind, tmp_path, pki, foreman):
    async with deploy(kind, tmp_path, pki, foreman.url, trusted_hosts=[pki.client_cn]) as d:
        async with d.client() as client:
            features = (await client.get("/v2/features")).json()
            assert features["dynflow"]["state"] == "running"
            if kind == "in-process":
                assert features["dynflow"]["capabilities"] == [
                    "local-batch",
                    "local-group",
                    "single",
                ]
            callback = {"task_id": "foreman-task", "step_id": 3}
            response = await client.post(
                "/dynflow/tasks/launch",
                json=run_script({"script": "echo through the proxy", "callback": callback}),
                headers={"X-Request-Id": "req-through-proxy"},
            )
            assert response.status_code == 200, response.text
            task_id = response.json()["task_id"]
            await wait_plan_state(d.core.world, task_id)
            status = (await client.get(f"/dynflow/tasks/{task_id}/status")).json()
        runner = status["actions"][0]
        assert runner["output"]["result"][0]["output"] == "through the proxy\n"
        assert runner["input"]["current_request_id"] == "req-through-proxy"
        host = d.proxy.https_url.split("://", 1)[1]
        assert runner["input"]["callback_host"] == f"https://{host}"
        await wait_for(lambda: _value(foreman.callbacks))
        assert foreman.callbacks[0]["callback"] == callback


async def _value(value: Any) -> Any:
    return value


async def test_relay_to_a_core_that_is_down_is_a_502(tmp_path, pki):
    port = free_port()
    relay = {"enabled": True, "external_core": True, "core_url": f"http://127.0.0.1:{port}"}
    async with smart_proxy(tmp_path, [DynflowPlugin], {"dynflow": relay}, pki=pki) as proxy:
        async with httpx.AsyncClient(base_url=proxy.http_url) as client:
            response = await client.get("/dynflow/tasks/count")
        assert response.status_code == 502
        assert "unreachable" in response.json()["error"]
        features = proxy.host.plugins["dynflow"]
        assert features.state == "running"


async def test_in_process_core_loads_core_plugins_from_the_proxy_settings(
    tmp_path, pki, foreman, monkeypatch
):
    """The entry points of smart_proxy_dynflow.plugins load inside the proxy as in the core."""
    monkeypatch.syspath_prepend(
        str(Path(__file__).resolve().parents[1] / "support" / "plugin_dist")
    )
    dynflow = {"enabled": True, "database": f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"}
    async with smart_proxy(
        tmp_path / "proxy",
        [DynflowPlugin],
        {"dynflow": dynflow, "local_command": {"enabled": True}},
        foreman_url=foreman.url,
    ) as proxy:
        plugin = proxy.plugin("dynflow")
        assert plugin.core_plugins.loaded == ["local_command"]
        async with httpx.AsyncClient(base_url=proxy.http_url) as client:
            operations = (await client.get("/dynflow/tasks/operations")).json()
            assert operations == ["single", "local-batch", "local-group"]
            response = await client.post(
                "/dynflow/tasks/launch", json=run_script({"script": "true"})
            )
            assert response.json()["result"] == "success"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"enabled": "sometimes"}, "enabled"),
        ({"enabled": True, "pool_size": "abc"}, "'pool_size' must be a positive integer"),
        ({"enabled": True, "execution_plan_cleaner_age": -5}, "'execution_plan_cleaner_age'"),
        ({"enabled": True, "external_core": "maybe"}, "external_core"),
        ({"enabled": True, "external_core": True, "core_url": "not a url"}, "core_url"),
        ({"enabled": True, "database": ["x"]}, "'database'"),
        ({"enabled": True, "console_trusted_hosts": 5}, "'console_trusted_hosts' must be a list"),
        ({"enabled": True, "console_trusted_hosts": ["a.example.com", ""]}, "host names"),
    ],
)
async def test_broken_dynflow_settings_fail_only_the_plugin(tmp_path, settings, message):
    plugins = [LogsPlugin, DynflowPlugin]
    async with smart_proxy(
        tmp_path, plugins, {"dynflow": settings, "logs": {"enabled": True}}
    ) as proxy:
        record = proxy.host.plugins["dynflow"]
        assert record.state == "failed"
        assert message in proxy.host.failed_modules["dynflow"]
        async with httpx.AsyncClient(base_url=proxy.http_url) as client:
            assert (await client.get("/dynflow/tasks/count")).status_code == 404
            features = (await client.get("/v2/features")).json()
            assert features["dynflow"]["state"] == "failed"
            logs = (await client.get("/logs")).json()
            assert "dynflow" in logs["info"]["failed_modules"]


def test_the_development_config_of_make_run(tmp_path):
    """`make run`'s config/: the proxy serves /dynflow and /ssh with its state under ./var."""
    import shutil
    import signal
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[2]
    config = tmp_path / "config"
    shutil.copytree(repo / "config", config, ignore=shutil.ignore_patterns("core", "relay"))
    port = free_port()
    text = (config / "settings.yml").read_text().replace(":http_port: 8000", f":http_port: {port}")
    (config / "settings.yml").write_text(text)
    keygen = [sys.executable, "-m", "smart_proxy_remote_execution_ssh.keygen"]
    subprocess.run([*keygen, "var/ssh/id_rsa_foreman_proxy"], cwd=tmp_path, check=True)
    script = Path(sys.executable).parent / "smart-proxy"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "smart_proxy.cli"]
    proc = subprocess.Popen(
        [*command, "-c", str(config)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                features = httpx.get(f"http://127.0.0.1:{port}/features", timeout=2).json()
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
                time.sleep(0.1)
        assert features == ["dynflow", "logs", "script"]
        operations = httpx.get(f"http://127.0.0.1:{port}/dynflow/tasks/operations").json()
        assert operations == ["single", "ssh"]
        pubkey = httpx.get(f"http://127.0.0.1:{port}/ssh/pubkey").text
        assert pubkey.startswith("ssh-ed25519 ")
        count = httpx.get(f"http://127.0.0.1:{port}/dynflow/tasks/count").json()
        assert count == {"count": 0, "state": "all"}
        assert (tmp_path / "var" / "dynflow.sqlite").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
