"""Core endpoints (§9; §13 ``root_api``, ``root_v2_api``, ``logs_api``/``integration``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from smart_proxy.host import Host, PluginRecord, PluginState
from smart_proxy.root import VERSION, LogsPlugin, proxy_version
from smart_proxy.server import ASGIApp, with_tls
from smart_proxy.tls import ClientCertificate, load_certificate
from tests.support import proxy_plugins
from tests.support.certs import Pki, make_pki
from tests.support.proxy_plugins import CALLS, make_host

FILES = {
    "hello": {"enabled": True, "greeting": "hi"},
    "computed": {"enabled": True, "with_d": True},
    "broken_start": {"enabled": True},
    "https_only": {"enabled": False},
    "needs_missing": {"enabled": True},
}


@pytest.fixture(autouse=True)
def reset_plugins() -> Iterator[None]:
    proxy_plugins.reset()
    yield
    proxy_plugins.reset()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("root-pki"))


def client(
    app: ASGIApp, *, https: bool = False, cert: ClientCertificate | None = None
) -> httpx.AsyncClient:
    if https:
        app = with_tls(app, cert)
    scheme = "https" if https else "http"
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"{scheme}://proxy")


async def started(tmp_path: Path, files: dict | None = None, **settings: object) -> Host:
    host = make_host(tmp_path, FILES if files is None else files, **settings)
    await host.initialize()
    return host


async def test_features_lists_only_running_plugins(tmp_path: Path) -> None:
    host = await started(tmp_path, trusted_hosts=[])  # /features is open even then
    async with client(host.asgi_app("http")) as http:
        reply = await http.get("/features")
    assert reply.status_code == 200
    assert reply.json() == ["computed", "hello", "logs"]


async def test_version(tmp_path: Path) -> None:
    host = await started(tmp_path, trusted_hosts=[])
    async with client(host.asgi_app("https"), https=True) as https:
        reply = await https.get("/version")
    assert reply.status_code == 200
    assert reply.json() == {
        "version": VERSION,
        "modules": {"computed": "0.3", "hello": "1.4.2", "logs": VERSION},
    }
    assert VERSION == proxy_version() and not VERSION.endswith("-develop")


async def test_v2_features(tmp_path: Path) -> None:
    host = await started(tmp_path)
    async with client(host.asgi_app("http")) as http:
        reply = await http.get("/v2/features")
    assert reply.status_code == 200
    features = reply.json()
    assert set(features) == {p.name for p in proxy_plugins.ALL} | {"logs"}
    assert features["hello"] == {
        "http_enabled": True,
        "https_enabled": True,
        "settings": {"exposed_value": "shown", "greeting": "hi"},
        "state": "running",
        "capabilities": ["say", "wave"],
    }
    # strings merged with callable results: flattened, de-duplicated, None-free, sorted
    assert features["computed"]["capabilities"] == ["a", "b", "c", "d"]
    assert features["logs"] == {
        "http_enabled": True,
        "https_enabled": True,
        "settings": {},
        "state": "running",
        "capabilities": [],
    }
    # a failed plugin: static capabilities only, both ports false
    assert features["broken_start"] == {
        "http_enabled": False,
        "https_enabled": False,
        "settings": {},
        "state": "failed",
        "capabilities": ["static_broken"],
    }
    assert features["https_only"]["state"] == "disabled"
    assert features["needs_missing"]["state"] == "failed"


async def test_v2_features_does_not_call_capabilities_of_a_disabled_plugin(
    tmp_path: Path,
) -> None:
    host = await started(tmp_path, {"computed": {"enabled": False}})
    async with client(host.asgi_app("http")) as http:
        features = (await http.get("/v2/features")).json()
    assert features["computed"]["state"] == "disabled"
    assert features["computed"]["capabilities"] == ["a"]
    assert CALLS["computed"] == 0
    # running: evaluated at every request
    host = await started(tmp_path / "again", {"computed": {"enabled": True}})
    async with client(host.asgi_app("http")) as http:
        await http.get("/v2/features")
        await http.get("/v2/features")
    assert CALLS["computed"] == 2


def test_uninitialized_plugin_has_no_capabilities() -> None:
    record = PluginRecord("computed", "0.3", proxy_plugins.ComputedCapabilityPlugin)
    assert record.state == PluginState.UNINITIALIZED
    assert record.evaluated_capabilities() == []
    assert record.exposed_settings == {}


async def test_failing_capability_is_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Flaky(proxy_plugins.ComputedCapabilityPlugin):
        name = "flaky"
        capabilities = ["ok", lambda plugin: 1 / 0]

    host = await started(tmp_path, {"flaky": {"enabled": True}}, classes=[Flaky])
    async with client(host.asgi_app("http")) as http:
        reply = await http.get("/v2/features")
    assert reply.status_code == 200
    assert reply.json()["flaky"]["capabilities"] == ["ok"]
    assert "Capability of plugin 'flaky' failed" in caplog.text


async def test_v2_features_and_logs_are_protected(tmp_path: Path, pki: Pki) -> None:
    client_cert = load_certificate(pki.client_cert)
    other_cert = load_certificate(pki.other_client_cert)
    # trusted_hosts unset: plain HTTP is open, HTTPS needs a client certificate
    host = await started(tmp_path / "open")
    app = host.dispatch_app()
    async with client(app) as http:
        assert (await http.get("/v2/features")).status_code == 200
        assert (await http.get("/logs/")).status_code == 200
    async with client(app, https=True) as https:
        for path in ("/v2/features", "/logs/"):
            reply = await https.get(path)
            assert reply.status_code == 403
            assert reply.json() == {"error": "No client SSL certificate supplied"}
        assert (await https.get("/features")).status_code == 200
    async with client(app, https=True, cert=client_cert) as https:
        assert (await https.get("/v2/features")).status_code == 200
        assert (await https.get("/logs")).status_code == 200

    # trusted_hosts [] denies everyone; a listed CN is let in over HTTPS
    host = await started(tmp_path / "closed", trusted_hosts=[])
    async with client(host.dispatch_app(), https=True, cert=client_cert) as https:
        assert (await https.get("/v2/features")).status_code == 403
        assert (await https.get("/logs/")).status_code == 403
    host = await started(tmp_path / "listed", trusted_hosts=["Proxy.Example.com"])
    app = host.dispatch_app()
    async with client(app, https=True, cert=client_cert) as https:
        assert (await https.get("/v2/features")).status_code == 200
    async with client(app, https=True, cert=other_cert) as https:
        reply = await https.get("/v2/features")
        assert reply.status_code == 403
        assert "Untrusted client other.example.com" in reply.json()["error"]


async def test_logs(tmp_path: Path) -> None:
    host = await started(tmp_path)
    root = logging.getLogger()
    root.addHandler(host.log_buffer)
    previous = root.level
    root.setLevel(logging.INFO)
    try:
        logging.getLogger("tests.root").info("first line")
        logging.getLogger("tests.root").error("second line")
        async with client(host.asgi_app("http")) as http:
            reply = await http.get("/logs/")
            assert reply.status_code == 200
            body = reply.json()
            cut = body["logs"][-1]["timestamp"]
            time.sleep(0.01)
            later = (await http.get("/logs", params={"from_timestamp": cut + 0.005})).json()
            bad = await http.get("/logs/", params={"from_timestamp": "yesterday"})
    finally:
        root.removeHandler(host.log_buffer)
        root.setLevel(previous)
    assert body["info"] == {
        "size": 2000,
        "tail_size": 1000,
        "level": None,
        "level_tail": 3,
        "failed_modules": {
            "broken_start": "cannot bind the frobnicator",
            "needs_missing": "'nonexistent' required by 'needs_missing' could not be found.",
        },
    }
    messages = [entry["message"] for entry in body["logs"]]
    assert messages.index("first line") < messages.index("second line")
    timestamps = [entry["timestamp"] for entry in body["logs"]]
    assert timestamps == sorted(timestamps)
    levels = {entry["message"]: entry["level"] for entry in body["logs"]}
    assert levels["second line"] == "ERROR"
    # the first request's own "Started"/"Finished" lines carry its request id
    started_line = next(e for e in body["logs"] if e["message"].startswith("Started GET /logs"))
    assert len(started_line["request_id"]) == 8
    assert all(entry["timestamp"] >= cut + 0.005 for entry in later["logs"])
    assert not any(entry["message"] == "first line" for entry in later["logs"])
    assert bad.status_code == 400


async def test_logs_module_can_be_disabled(tmp_path: Path) -> None:
    host = await started(tmp_path, {"logs": {"enabled": False}}, classes=[LogsPlugin])
    async with client(host.asgi_app("http")) as http:
        assert (await http.get("/logs/")).status_code == 404
        assert (await http.get("/features")).json() == []
