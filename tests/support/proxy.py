"""A real Smart Proxy for tests: a Host with chosen plugins behind real HTTP and HTTPS sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from smart_proxy.cli import build_listeners
from smart_proxy.host import Host
from smart_proxy.plugin import Plugin
from smart_proxy.server import serve
from smart_proxy.settings import ProxySettings

from .certs import Pki
from .services import free_port


@dataclass
class ProxyService:
    host: Host
    http_url: str
    https_url: str | None

    def plugin(self, name: str) -> Any:
        return self.host.plugin(name)


@contextlib.asynccontextmanager
async def smart_proxy(
    directory: Path,
    plugin_classes: Sequence[type[Plugin]],
    plugin_settings: dict[str, dict[str, Any]],
    *,
    pki: Pki | None = None,
    **global_settings: Any,
) -> AsyncIterator[ProxyService]:
    """Write ``settings.d/<name>.yml`` files, start the host and serve it until the block ends."""
    settings_d = directory / "settings.d"
    settings_d.mkdir(parents=True, exist_ok=True)
    for name, values in plugin_settings.items():
        (settings_d / f"{name}.yml").write_text(yaml.safe_dump(values))
    values: dict[str, Any] = {
        "settings_directory": str(settings_d),
        "http_port": free_port(),
        "bind_host": ["127.0.0.1"],
        **global_settings,
    }
    if pki is not None:
        values.update(
            https_port=free_port(),
            ssl_certificate=pki.server_cert,
            ssl_private_key=pki.server_key,
            ssl_ca_file=pki.ca_cert,
        )
    settings = ProxySettings(**values)
    host = Host(settings, list(plugin_classes))
    await host.initialize()
    listeners = build_listeners(settings)
    ready = asyncio.Event()
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve(host.dispatch_app(), listeners, on_ready=ready.set, shutdown=stop, lifespan="off")
    )
    try:
        await asyncio.wait_for(ready.wait(), 15)
        urls = {listener.name: listener.url for listener in listeners}
        yield ProxyService(host, urls["http"], urls.get("https"))
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await host.shutdown()
