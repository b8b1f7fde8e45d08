"""Plugins of the standalone core service, found through Python entry points.

A package adds work to the core by declaring an entry point in the group
``smart_proxy_dynflow.plugins`` that names a :class:`CorePlugin`-like object::

    [project.entry-points."smart_proxy_dynflow.plugins"]
    script = "smart_proxy_remote_execution_ssh.plugin:core_plugin"

The plugin is loaded when one of its ``settings_names`` has a ``settings.d/<name>.yml`` whose
``enabled`` is true (or ``http``/``https``). Its ``register(core, settings)`` fills the core's
registries (actions, launchers). A plugin that fails to load or register is logged and left
out; the service keeps running without it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .core import Core

log = logging.getLogger("smart_proxy_dynflow.plugin")

ENTRY_POINT_GROUP = "smart_proxy_dynflow.plugins"


class CorePlugin(Protocol):
    name: str
    settings_names: tuple[str, ...]

    def register(self, core: Core, settings: dict[str, Any]) -> None: ...


@dataclass
class LoadedPlugins:
    loaded: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def enabled(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "http", "https", "yes", "on")
    return value is True


def load_plugins(core: Core, plugin_settings: dict[str, dict[str, Any]]) -> LoadedPlugins:
    result = LoadedPlugins()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            plugin = ep.load()
            names = tuple(getattr(plugin, "settings_names", ()) or (plugin.name,))
            merged: dict[str, Any] = {}
            for name in names:
                merged.update(plugin_settings.get(name) or {})
            if not enabled(merged.get("enabled", False)):
                result.disabled.append(plugin.name)
                continue
            plugin.register(core, merged)
        except Exception as exc:  # a broken plugin must not stop the service
            log.exception("plugin %s failed to load", ep.name)
            result.failed[ep.name] = f"{type(exc).__name__}: {exc}"
            continue
        log.info("plugin %s loaded", plugin.name)
        result.loaded.append(plugin.name)
    return result
