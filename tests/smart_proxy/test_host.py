"""Plugin initialization and lifecycle (§6, §11; §13 ``plugin_initializer``/``plugin_group``/
``module_loader``), and the per-protocol apps (§7)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from smart_proxy.host import Host, PluginState, SessionFilter
from smart_proxy.plugin import Plugin, Protocol
from smart_proxy.root import LogsPlugin
from smart_proxy.server import ASGIApp, with_tls
from smart_proxy.settings import ProxySettings
from tests.support import proxy_plugins
from tests.support.proxy_plugins import EVENTS, make_host, write_plugin_dist

GROUP_FAILURE = "Disabling all modules in the group ['{}'] due to a failure in one of them: "


@pytest.fixture(autouse=True)
def reset_plugins() -> Iterator[None]:
    proxy_plugins.reset()
    yield
    proxy_plugins.reset()


def client(app: ASGIApp, *, https: bool = False) -> httpx.AsyncClient:
    if https:
        app = with_tls(app)
    scheme = "https" if https else "http"
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"{scheme}://proxy")


def state(host: Host, name: str) -> str:
    return str(host.plugins[name].state)


async def test_enabled_values_map_to_states_and_ports(tmp_path: Path) -> None:
    host = make_host(
        tmp_path,
        {
            "hello": {"enabled": True},
            "https_only": {"enabled": "https"},
            "computed": {"enabled": "http"},
            "needs_missing": {"enabled": False},
        },
    )
    await host.initialize()
    ports = {
        name: (str(r.state), r.http_enabled, r.https_enabled) for name, r in host.plugins.items()
    }
    assert ports["hello"] == ("running", True, True)
    assert ports["https_only"] == ("running", False, True)
    assert ports["computed"] == ("running", True, False)
    assert ports["needs_missing"] == ("disabled", False, False)
    assert ports["invalid"] == ("disabled", False, False)  # no file: the shared default
    assert ports["logs"] == ("running", True, True)  # enabled by default
    assert host.failed_modules == {}
    assert isinstance(host.plugin("hello"), proxy_plugins.HelloPlugin)
    assert host.plugin("needs_missing") is None and host.plugin("nonexistent") is None
    hello = host.plugins["hello"]
    assert hello.version == "1.4.2"
    assert hello.settings == {"enabled": True, "greeting": "hello", "exposed_value": "shown"}
    assert hello.exposed_settings == {"exposed_value": "shown", "greeting": "hello"}
    assert hello.capabilities == ["say", "wave"]
    await host.shutdown()


async def test_missing_settings_file_uses_defaults(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    host = make_host(tmp_path, {}, [LogsPlugin, proxy_plugins.HelloPlugin])
    with caplog.at_level(logging.DEBUG, logger="smart_proxy.host"):
        await host.initialize()
    path = tmp_path / "settings.d" / "hello.yml"
    assert f"Couldn't find settings file {path}. Using default settings." in caplog.text
    assert state(host, "hello") == "disabled"
    assert state(host, "logs") == "running"
    assert "'logs' settings: 'enabled': True (default)" in caplog.text
    assert "'hello' ports: 'http': false, 'https': false" in caplog.text


async def test_settings_debug_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    host = make_host(
        tmp_path, {"hello": {"enabled": "http", "greeting": "hi"}}, [proxy_plugins.HelloPlugin]
    )
    with caplog.at_level(logging.DEBUG, logger="smart_proxy.host"):
        await host.initialize()
    assert (
        "'hello' settings: 'enabled': 'http', 'exposed_value': 'shown' (default), "
        "'greeting': 'hi'" in caplog.text
    )
    assert "'hello' ports: 'http': true, 'https': false" in caplog.text
    assert "Successfully initialized 'hello'" in caplog.text


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (":enabled: true\n:greeting: [unclosed\n", "invalid YAML at line "),
        ("- a list\n", "expected a mapping of settings, got list"),
        (
            ":enabled: sometimes\n",
            "enabled: invalid value 'sometimes' (expected true, false, 'http' or 'https')",
        ),
    ],
)
async def test_broken_settings_file_fails_the_plugin(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str, expected: str
) -> None:
    host = make_host(tmp_path, {"hello": content, "computed": {"enabled": True}})
    await host.initialize()
    path = tmp_path / "settings.d" / "hello.yml"
    record = host.plugins["hello"]
    assert (str(record.state), record.http_enabled, record.https_enabled) == (
        "failed",
        False,
        False,
    )
    message = host.failed_modules["hello"]
    assert message.startswith(str(path)) and expected in message
    assert GROUP_FAILURE.format("hello") + message in caplog.text
    assert EVENTS == []  # never instantiated
    assert state(host, "computed") == "running"  # others are not affected


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"key_file": "/nonexistent/key"}, "'key_file' parameter doesn't exist or is unreadable"),
        ({"mode": "sideways"}, "Parameter 'mode' is expected to be one of 'fast', 'slow'"),
        ({"mode": ""}, "Parameter 'mode' is expected to have a non-empty value"),
        ({"count": 3}, "Parameter 'count' must be an even number"),
    ],
)
async def test_validation_failure_fails_the_plugin(
    tmp_path: Path, settings: dict[str, Any], expected: str
) -> None:
    host = make_host(tmp_path, {"invalid": {"enabled": True, **settings}})
    await host.initialize()
    assert state(host, "invalid") == "failed"
    path = tmp_path / "settings.d" / "invalid.yml"
    message = host.failed_modules["invalid"]
    assert message.startswith(f"{path}: ") and expected in message


async def test_validations_pass(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("secret")
    host = make_host(
        tmp_path, {"invalid": {"enabled": True, "key_file": str(key), "mode": "slow", "count": 4}}
    )
    await host.initialize()
    assert state(host, "invalid") == "running"
    assert host.plugin("invalid").settings.mode == "slow"  # type: ignore[union-attr]


async def test_disabled_plugins_are_not_validated(tmp_path: Path) -> None:
    host = make_host(tmp_path, {"invalid": {"enabled": False, "mode": "sideways"}})
    await host.initialize()
    assert state(host, "invalid") == "disabled"
    assert host.failed_modules == {}


async def test_requirements(tmp_path: Path) -> None:
    host = make_host(
        tmp_path,
        {
            "hello": {"enabled": True},
            "needs_missing": {"enabled": True},
            "needs_newer_hello": {"enabled": True},
            "needs_hello": {"enabled": True},
        },
    )
    await host.initialize()
    assert host.failed_modules == {
        "needs_missing": "'nonexistent' required by 'needs_missing' could not be found.",
        "needs_newer_hello": "Available version '1.4.2' of 'hello' doesn't match version "
        "'~> 2.0' required by 'needs_newer_hello'",
    }
    assert state(host, "needs_hello") == "running"


async def test_requirement_on_a_disabled_plugin(tmp_path: Path) -> None:
    host = make_host(tmp_path, {"hello": {"enabled": False}, "needs_hello": {"enabled": True}})
    await host.initialize()
    assert state(host, "needs_hello") == "failed"
    assert host.failed_modules["needs_hello"] == "'hello' required by 'needs_hello' is not enabled."


async def test_plugins_start_in_dependency_order_and_stop_in_reverse(tmp_path: Path) -> None:
    # needs_hello is registered before hello; it still starts after it.
    host = make_host(
        tmp_path,
        {"hello": {"enabled": True}, "needs_hello": {"enabled": True}},
        [proxy_plugins.NeedsHelloPlugin, proxy_plugins.HelloPlugin],
    )
    await host.initialize()
    assert EVENTS == ["hello:start", "needs_hello:start"]
    await host.shutdown()
    assert EVENTS == ["hello:start", "needs_hello:start", "needs_hello:stop", "hello:stop"]
    await host.shutdown()  # once only
    assert len(EVENTS) == 4


async def test_start_failure_fails_the_plugin_and_its_dependents(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    host = make_host(
        tmp_path,
        {
            "broken_start": {"enabled": True},
            "needs_broken": {"enabled": True},
            "hello": {"enabled": True},
        },
    )
    await host.initialize()
    broken = host.plugins["broken_start"]
    assert (str(broken.state), broken.http_enabled, broken.https_enabled) == (
        "failed",
        False,
        False,
    )
    assert broken.instance is None and host.plugin("broken_start") is None
    assert host.failed_modules["broken_start"] == "cannot bind the frobnicator"
    # stop() ran after the failed start(), releasing what start() acquired
    start = EVENTS.index("broken_start:start")
    assert EVENTS[start + 1] == "broken_start:stop"
    assert proxy_plugins.BrokenStartPlugin.resources == []
    assert "needs_broken:start" not in EVENTS
    assert host.failed_modules["needs_broken"] == (
        "'broken_start' required by 'needs_broken' failed to initialize."
    )
    assert GROUP_FAILURE.format("broken_start") + "cannot bind the frobnicator" in caplog.text
    assert "RuntimeError: cannot bind the frobnicator" in caplog.text  # with the traceback
    assert state(host, "hello") == "running"
    async with client(host.asgi_app("http")) as http:
        assert (await http.get("/broken/")).status_code == 404
        assert (await http.get("/hello/")).status_code == 200


class CycleA(Plugin):
    name = "cycle_a"
    version = "1.0"
    requires = {"cycle_b": ">= 1"}

    async def start(self) -> None:
        EVENTS.append("cycle_a:start")

    async def stop(self) -> None:
        EVENTS.append("cycle_a:stop")


class CycleB(Plugin):
    name = "cycle_b"
    version = "1.0"
    requires = {"cycle_a": ">= 1"}

    async def start(self) -> None:
        raise OSError("no such device")


async def test_requirements_are_checked_again_after_starting(tmp_path: Path) -> None:
    host = make_host(
        tmp_path, {"cycle_a": {"enabled": True}, "cycle_b": {"enabled": True}}, [CycleA, CycleB]
    )
    await host.initialize()
    assert state(host, "cycle_b") == "failed"
    assert state(host, "cycle_a") == "failed"  # it was running: stopped, then failed
    assert EVENTS == ["cycle_a:start", "cycle_a:stop"]
    assert host.failed_modules == {
        "cycle_b": "no such device",
        "cycle_a": "'cycle_b' required by 'cycle_a' failed to initialize.",
    }
    await host.shutdown()
    assert EVENTS == ["cycle_a:start", "cycle_a:stop"]


class ExplodingInit(Plugin):
    name = "exploding_init"

    def __init__(self, host: Host, settings: Any) -> None:
        raise KeyError("bad wiring")


class NoMountPath(Plugin):
    name = "no_mount_path"

    def asgi_app(self, protocol: Protocol) -> ASGIApp | None:
        return Starlette()

    async def stop(self) -> None:
        EVENTS.append("no_mount_path:stop")


class AppFailure(Plugin):
    name = "app_failure"
    mount_path = "/app_failure"

    def asgi_app(self, protocol: Protocol) -> ASGIApp | None:
        raise ValueError(f"no app for {protocol}")


async def test_construction_and_app_failures(tmp_path: Path) -> None:
    host = make_host(
        tmp_path,
        {name: {"enabled": True} for name in ("exploding_init", "no_mount_path", "app_failure")},
        [ExplodingInit, NoMountPath, AppFailure],
    )
    await host.initialize()
    assert host.failed_modules == {
        "exploding_init": "cannot create the plugin: 'bad wiring'",
        "no_mount_path": "plugin 'no_mount_path' serves http but declares no mount_path",
        "app_failure": "no app for http",
    }
    assert EVENTS == ["no_mount_path:stop"]


async def test_apps_per_protocol(tmp_path: Path) -> None:
    host = make_host(
        tmp_path,
        {"hello": {"enabled": "http"}, "https_only": {"enabled": True}},
    )
    await host.initialize()
    assert host.mounted("http") == {"/logs": "logs", "/hello": "hello"}
    assert host.mounted("https") == {"/logs": "logs", "/https_only": "https_only"}
    app = host.dispatch_app()
    async with client(app) as http, client(app, https=True) as https:
        reply = await http.get("/hello/protocol")
        assert reply.json() == {"greeting": "hello", "protocol": "http"}
        assert (await http.get("/hello")).json()["protocol"] == "http"  # no redirect
        assert (await https.get("/hello/protocol")).status_code == 404
        assert (await http.get("/https_only/")).status_code == 404
        assert (await https.get("/https_only")).json() == {"plugin": "https_only"}
        missing = await http.get("/no/such/route")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/json"
        assert missing.json() == {"error": "Requested url was not found"}
        assert "x-request-id" in missing.headers
    with pytest.raises(ValueError):
        host.asgi_app("gopher")  # type: ignore[arg-type]


async def test_request_and_session_ids_reach_the_log(tmp_path: Path) -> None:
    host = make_host(tmp_path, {"hello": {"enabled": True}})
    await host.initialize()
    records: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Capture()
    handler.addFilter(SessionFilter())
    request_logger = logging.getLogger("smart_proxy.request")
    request_logger.addHandler(handler)
    previous = request_logger.level
    request_logger.setLevel(logging.INFO)
    try:
        async with client(host.asgi_app("http")) as http:
            reply = await http.get(
                "/hello/", headers={"X-Request-Id": "req-1234567890", "X-Session-Id": "sess-42"}
            )
    finally:
        request_logger.removeHandler(handler)
        request_logger.setLevel(previous)
    assert reply.headers["x-request-id"] == "req-1234567890"
    started = [r for r in records if r.getMessage().startswith("Started GET /hello/")]
    assert started and started[0].session_id == "sess-42"  # type: ignore[attr-defined]


async def test_entry_point_discovery_and_builtin_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    dist = write_plugin_dist(
        tmp_path / "dist",
        {"hello": proxy_plugins.HelloPlugin, "computed": proxy_plugins.ComputedCapabilityPlugin},
    )
    entry_points = dist / "smart_proxy_test_plugins-0.1.dist-info" / "entry_points.txt"
    entry_points.write_text(
        entry_points.read_text()
        + "ghost = tests.support.no_such_module:Ghost\n"
        + "twin = tests.smart_proxy.test_host:HelloTwin\n"
        + "logs = smart_proxy.root:LogsPlugin\n"  # also built in: one plugin, no clash
    )
    monkeypatch.syspath_prepend(str(dist))
    directory = tmp_path / "settings.d"
    proxy_plugins.write_settings_d(directory, {"hello": {"enabled": True}})
    host = Host(ProxySettings(settings_directory=str(directory)))
    await host.initialize()
    assert state(host, "logs") == "running"
    assert state(host, "hello") == "running"
    assert state(host, "computed") == "disabled"
    assert state(host, "ghost") == "failed"
    assert "No module named 'tests.support.no_such_module'" in host.failed_modules["ghost"]
    # A second class with a taken name is ignored, not registered
    assert host.plugins["hello"].plugin_class is proxy_plugins.HelloPlugin
    assert "Plugin name 'hello' is declared twice" in caplog.text
    assert "Plugin name 'logs'" not in caplog.text


class HelloTwin(proxy_plugins.HelloPlugin):
    pass


async def test_explicit_classes_only(tmp_path: Path) -> None:
    host = make_host(tmp_path, {"hello": {"enabled": True}}, [proxy_plugins.HelloPlugin])
    await host.initialize()
    assert list(host.plugins) == ["hello"]
    with pytest.raises(RuntimeError, match="already initialized"):
        await host.initialize()


async def test_authorizer_comes_from_the_settings(tmp_path: Path) -> None:
    host = make_host(tmp_path, {}, [], trusted_hosts=["Foreman.Example.com"], forward_verify=False)
    assert host.authorizer.trusted == {"foreman.example.com"}
    assert host.authorizer.forward_verify is False
    assert host.log_buffer.size == 2000 and host.log_buffer.tail_size == 1000
    assert PluginState.RUNNING == "running"
