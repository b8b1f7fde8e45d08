"""The `script` plugin in both deployments, and its ``/ssh`` endpoints (§2, §8).

* :data:`core_plugin` (entry point group ``smart_proxy_dynflow.plugins``): gives a dynflow core
  the ``ssh`` operation (a batch launcher) and ``RunScript`` under both wire names. The
  standalone core service loads it from its own ``settings.d/remote_execution_ssh.yml``; the
  Smart Proxy's in-process dynflow core loads it from the proxy's ``settings.d``.
* :class:`ScriptPlugin` (entry point group ``smart_proxy.plugins``): the Smart Proxy module
  ``script``: validates the settings (a failure fails the module cleanly), advertises the
  ``cockpit`` capability, and serves ``GET /ssh/pubkey`` and ``GET /ssh/ca_pubkey``.
"""

from __future__ import annotations

import asyncio
import logging
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, ClassVar, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from smart_proxy.plugin import Plugin
from smart_proxy_dynflow.launcher import BatchLauncher

from . import settings as rex_settings
from .actions import EXTENSION, RunScript

log = logging.getLogger("smart_proxy_remote_execution_ssh")

try:
    VERSION = package_version("smart-proxy-dynflow")
except PackageNotFoundError:  # pragma: no cover
    VERSION = "0.0.0"


class RexState:
    """What the runner actions of one core need: settings and the shared host-key store."""

    def __init__(self, settings: dict[str, Any]) -> None:
        from .known_hosts import KnownHosts

        self.settings = settings
        self.known_hosts = KnownHosts.from_settings(settings)
        self.max_starting_jobs = int(settings.get("max_starting_jobs") or 64)
        self._starts: asyncio.Semaphore | None = None
        self._starts_loop: asyncio.AbstractEventLoop | None = None

    def start_slots(self) -> asyncio.Semaphore:
        """Bounds the jobs that are connecting and launching at the same time.

        A batch of thousands of hosts does not open thousands of key exchanges at once: the
        jobs start ``max_starting_jobs`` at a time, and a job gives its slot back as soon as
        its script runs, so long scripts never hold one. Contending handshakes make every
        start slower; the first results arrive sooner and the batch ends sooner this way.
        """
        loop = asyncio.get_running_loop()
        if self._starts is None or self._starts_loop is not loop:
            self._starts = asyncio.Semaphore(self.max_starting_jobs)
            self._starts_loop = loop
        return self._starts

    def options(self, input: dict[str, Any]) -> Any:
        from .options import ScriptOptions

        return ScriptOptions.from_input(input, self.settings)


_SSH_LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
}


def apply_ssh_log_level(level: str) -> None:
    """``ssh_log_level`` is the level of the SSH library's own log (``asyncssh`` logger): its
    messages about connections, authentication and channels go to the proxy's log file."""
    logging.getLogger("asyncssh").setLevel(_SSH_LOG_LEVELS.get(level, logging.ERROR))


def register(core: Any, settings: dict[str, Any]) -> None:
    """Give ``core`` the ``ssh`` operation and RunScript (raises on invalid settings)."""
    values = rex_settings.check(settings)
    apply_ssh_log_level(values["ssh_log_level"])
    core.extensions[EXTENSION] = RexState(values)
    core.actions.register(RunScript)
    core.launchers.register("ssh", BatchLauncher)


class RexCorePlugin:
    name = "script"
    settings_names = rex_settings.SETTINGS_NAMES

    def register(self, core: Any, settings: dict[str, Any]) -> None:
        register(core, settings)


core_plugin = RexCorePlugin()


def _cockpit(plugin: ScriptPlugin) -> str | None:
    return "cockpit" if plugin.settings.get("cockpit_integration") else None


class ScriptPlugin(Plugin):
    name = "script"
    version = VERSION
    settings_file = rex_settings.SETTINGS_FILE
    mount_path = "/ssh"
    default_settings: ClassVar[dict[str, Any]] = dict(rex_settings.DEFAULTS)
    requires: ClassVar[dict[str, str]] = {"dynflow": ">= 0.1"}
    capabilities: ClassVar[list[Any]] = [_cockpit]

    async def start(self) -> None:
        # §2.2, with the proxy's log level at hand; a failure marks the module failed.
        rex_settings.check(dict(self.settings), self.host.settings.log_level)

    def _file(self, key: str) -> Path | None:
        value = rex_settings.effective(self.settings).get(key)
        return Path(value) if value else None

    def asgi_app(self, protocol: Literal["http", "https"]) -> Any:
        async def pubkey(request: Request) -> Response:
            key = self._file("ssh_identity_key_file")
            assert key is not None
            try:
                return PlainTextResponse(key.with_name(key.name + ".pub").read_text())
            except OSError as exc:
                return PlainTextResponse(f"public key unavailable: {exc.strerror}", 404)

        async def ca_pubkey(request: Request) -> Response:
            ca = self._file("ssh_user_ca_public_key_file")
            if ca is None:
                return PlainTextResponse("")
            try:
                return PlainTextResponse(ca.read_text())
            except OSError as exc:
                return PlainTextResponse(f"CA public key unavailable: {exc.strerror}", 404)

        return Starlette(
            routes=[
                Route("/pubkey", pubkey, methods=["GET"]),
                Route("/ca_pubkey", ca_pubkey, methods=["GET"]),
            ]
        )
