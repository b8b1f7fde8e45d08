"""Smart Proxy test plugins (``smart_proxy.plugin.Plugin`` subclasses).

Used in-process (passed to ``Host(settings, [...])``) and by the ``smart-proxy`` subprocess
tests through a fake dist-info whose ``entry_points.txt`` names them (``write_plugin_dist``).

* ``hello`` (:class:`HelloPlugin`): routes under ``/hello`` on both protocols, an exposed
  setting, static capabilities, a ``greeting`` default; ``/hello/secret`` is protected with
  ``authorize_any``; ``/hello/protocol`` tells which app answered. Records start/stop events.
* ``https_only`` (:class:`HttpsOnlyPlugin`): mounted only on HTTPS (``asgi_app`` returns None
  for HTTP), whatever ``enabled`` says.
* ``broken_start`` (:class:`BrokenStartPlugin`): ``start()`` raises after acquiring a resource;
  ``stop()`` releases it.
* ``invalid`` (:class:`InvalidSettingsPlugin`): validations that fail unless the settings file
  provides a readable ``key_file`` and a ``mode`` in the enum.
* ``needs_missing`` / ``needs_newer_hello`` / ``needs_hello`` / ``needs_broken``: requirements
  on a missing plugin, on a too new ``hello``, on a matching ``hello``, on ``broken_start``.
* ``slow_start`` (:class:`SlowStartPlugin`): ``start()`` hangs until cancelled.
* ``computed`` (:class:`ComputedCapabilityPlugin`): static and computed capabilities; the
  callables count their calls in ``CALLS``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from smart_proxy.plugin import Plugin, Protocol
from smart_proxy.server import ASGIApp
from smart_proxy.validators import ConfigurationError, Validation

EVENTS: list[str] = []
CALLS: dict[str, int] = {"computed": 0}


class HelloPlugin(Plugin):
    name = "hello"
    version = "1.4.2-develop"
    default_settings = {"greeting": "hello", "exposed_value": "shown"}
    exposed_settings = ["exposed_value", "greeting"]
    capabilities = ["say", "wave"]
    mount_path = "/hello"

    async def start(self) -> None:
        EVENTS.append("hello:start")

    async def stop(self) -> None:
        EVENTS.append("hello:stop")

    def asgi_app(self, protocol: Protocol) -> ASGIApp | None:
        async def index(request: Request) -> Response:
            return JSONResponse({"greeting": self.settings.greeting, "protocol": protocol})

        async def secret(request: Request) -> Response:
            denied = await self.host.authorizer.authorize_any(request)
            if denied is not None:
                return denied
            return PlainTextResponse("secret")

        return Starlette(
            routes=[Route("/", index), Route("/protocol", index), Route("/secret", secret)]
        )


class HttpsOnlyPlugin(Plugin):
    name = "https_only"
    version = "0.1"
    mount_path = "/https_only"

    def asgi_app(self, protocol: Protocol) -> ASGIApp | None:
        if protocol != "https":
            return None

        async def index(request: Request) -> Response:
            return JSONResponse({"plugin": self.name})

        return Starlette(routes=[Route("/", index)])


class BrokenStartPlugin(Plugin):
    name = "broken_start"
    version = "2.0"
    capabilities = ["static_broken", lambda plugin: "never_called"]
    mount_path = "/broken"
    resources: list[str] = []

    async def start(self) -> None:
        self.resources.append("acquired")
        EVENTS.append("broken_start:start")
        raise RuntimeError("cannot bind the frobnicator")

    async def stop(self) -> None:
        self.resources.remove("acquired")
        EVENTS.append("broken_start:stop")

    def asgi_app(self, protocol: Protocol) -> ASGIApp | None:  # pragma: no cover - never mounted
        raise AssertionError("a failed plugin must never be mounted")


def _even(setting: str, value: Any, args: Any, settings: Mapping[str, Any]) -> None:
    if not isinstance(value, int) or value % 2:
        raise ConfigurationError(f"Parameter '{setting}' must be an even number")


class InvalidSettingsPlugin(Plugin):
    name = "invalid"
    version = "1.0"
    default_settings = {"mode": "fast"}
    validators = {"even": _even}
    validations = [
        Validation("key_file", "file_readable"),
        Validation("mode", "enum", args=["fast", "slow"]),
        Validation("count", "even", when=lambda settings: "count" in settings),
    ]
    mount_path = "/invalid"


class NeedsMissingPlugin(Plugin):
    name = "needs_missing"
    version = "1.0"
    requires = {"nonexistent": ">= 1.0"}


class NeedsNewerHelloPlugin(Plugin):
    name = "needs_newer_hello"
    version = "1.0"
    requires = {"hello": "~> 2.0"}


class NeedsHelloPlugin(Plugin):
    name = "needs_hello"
    version = "1.0"
    requires = {"hello": "~> 1.4"}

    async def start(self) -> None:
        assert self.host.plugin("hello") is not None, "requirements start first"
        EVENTS.append("needs_hello:start")

    async def stop(self) -> None:
        EVENTS.append("needs_hello:stop")


class NeedsBrokenPlugin(Plugin):
    name = "needs_broken"
    version = "1.0"
    requires = {"broken_start": ">= 1.0"}

    async def start(self) -> None:  # pragma: no cover - must not be started
        EVENTS.append("needs_broken:start")


class SlowStartPlugin(Plugin):
    """``start()`` never finishes by itself (a hung dependency); ``stop()`` logs."""

    name = "slow_start"
    version = "1.0"

    async def start(self) -> None:
        self.logger.info("slow_start is starting")
        await asyncio.sleep(3600)

    async def stop(self) -> None:
        self.logger.info("slow_start stopped")


def _computed(plugin: Plugin) -> list[str]:
    CALLS["computed"] += 1
    return ["b", "c", "a"]


class ComputedCapabilityPlugin(Plugin):
    name = "computed"
    version = "0.3"
    capabilities = [
        "a",
        _computed,
        lambda plugin: None,
        lambda plugin: "d" if plugin.settings.get("with_d") else None,
    ]


ALL = [
    HelloPlugin,
    HttpsOnlyPlugin,
    BrokenStartPlugin,
    InvalidSettingsPlugin,
    NeedsMissingPlugin,
    NeedsNewerHelloPlugin,
    NeedsHelloPlugin,
    NeedsBrokenPlugin,
    ComputedCapabilityPlugin,
]


def write_plugin_dist(directory: Path, plugins: Mapping[str, type[Plugin]]) -> Path:
    """A fake installed distribution under ``directory`` whose ``smart_proxy.plugins`` entry
    points name ``plugins`` (entry point name → class of this module). Put ``directory`` on
    ``sys.path``/``PYTHONPATH`` to make them discoverable."""
    dist = directory / "smart_proxy_test_plugins-0.1.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: smart-proxy-test-plugins\nVersion: 0.1\n"
    )
    lines = [f"{name} = {cls.__module__}:{cls.__qualname__}" for name, cls in plugins.items()]
    (dist / "entry_points.txt").write_text(
        "[smart_proxy.plugins]\n" + "\n".join(lines) + "\n", encoding="utf-8"
    )
    return directory


def yaml_settings(values: Mapping[str, Any]) -> str:
    """Ruby-symbol style YAML, as Foreman's installer writes it (JSON values are valid YAML)."""
    import json

    return "---\n" + "".join(f":{key}: {json.dumps(value)}\n" for key, value in values.items())


def write_settings_d(settings_dir: Path, files: Mapping[str, Mapping[str, Any] | str]) -> None:
    """``settings.d/<name>.yml`` files (a mapping is written Ruby style, a string as is)."""
    settings_dir.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        text = content if isinstance(content, str) else yaml_settings(content)
        (settings_dir / f"{name}.yml").write_text(text, encoding="utf-8")


def reset() -> None:
    EVENTS.clear()
    CALLS["computed"] = 0
    BrokenStartPlugin.resources.clear()


def make_host(
    tmp_path: Path,
    files: Mapping[str, Mapping[str, Any] | str] | None = None,
    classes: list[type[Plugin]] | None = None,
    **settings: Any,
) -> Any:
    """A :class:`smart_proxy.host.Host` over ``tmp_path/settings.d`` holding ``files``, with
    ``classes`` (default: the built-in ``logs`` plus :data:`ALL`)."""
    from smart_proxy.host import Host
    from smart_proxy.root import LogsPlugin
    from smart_proxy.settings import ProxySettings

    directory = tmp_path / "settings.d"
    write_settings_d(directory, files or {})
    proxy = ProxySettings(settings_directory=str(directory), **settings)
    return Host(proxy, classes if classes is not None else [LogsPlugin, *ALL])
