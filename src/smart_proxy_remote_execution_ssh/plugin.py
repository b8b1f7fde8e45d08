"""The `script` plugin in both deployments, and its ``/ssh`` endpoints (§2, §8).

* :data:`core_plugin` (entry point group ``smart_proxy_dynflow.plugins``): gives a dynflow core
  the ``ssh`` operation (a batch launcher), ``RunScript`` under both wire names and
  ``PullScript``; its :class:`RexState` is a service of the core (in the pull modes: the job
  index rebuilt at start, the MQTT dispatcher started and stopped with the core). The
  standalone core service loads it from its own ``settings.d/remote_execution_ssh.yml``; the
  Smart Proxy's in-process dynflow core loads it from the proxy's ``settings.d``. It also
  gives the core its secret box (the key file ``secrets.key`` beside ``ssh_identity_key_file``),
  which seals the jobs' passwords before they are stored.
* :class:`ScriptPlugin` (entry point group ``smart_proxy.plugins``): the Smart Proxy module
  ``script``: validates the settings (a failure fails the module cleanly), advertises the
  ``cockpit`` capability, and serves ``GET /ssh/pubkey``, ``GET /ssh/ca_pubkey``, the pull
  endpoints ``/ssh/jobs...`` (:mod:`.pull_api`) on the in-process core's jobs and, with
  ``cockpit_integration``, the web-console session ``POST /ssh/session`` (:mod:`.cockpit`).
"""

from __future__ import annotations

import asyncio
import logging
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from smart_proxy.plugin import Plugin
from smart_proxy_dynflow.context import CoreConfig
from smart_proxy_dynflow.core import Core
from smart_proxy_dynflow.launcher import BatchLauncher
from smart_proxy_dynflow.secret_box import SecretBox, key_file_beside

from . import settings as rex_settings
from .actions import RunScript
from .pull import PullScriptAction
from .pull_api import PullApi
from .state import MAX_CONCURRENT_HANDSHAKES, LoopSemaphore, RexState

if TYPE_CHECKING:
    from .known_hosts import KnownHosts

log = logging.getLogger("smart_proxy_remote_execution_ssh")

try:
    VERSION = package_version("smart-proxy-dynflow")
except PackageNotFoundError:  # pragma: no cover
    VERSION = "0.0.0"


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


def core_tls_files(config: CoreConfig) -> rex_settings.TlsFiles:
    """The TLS files of a core (its Foreman client certificate and CA, already falling back
    to the ``ssl_*`` files), presented to the MQTT broker."""
    return rex_settings.TlsFiles(
        config.foreman_ssl_ca, config.foreman_ssl_cert, config.foreman_ssl_key
    )


def register(core: Core, settings: dict[str, Any]) -> RexState:
    """Give ``core`` the ``ssh`` operation, RunScript and PullScript (raises on invalid
    settings); the plugin's state becomes an extension and a service of the core (it works in
    pull modes), and the key sealing the jobs' passwords at rest (beside the proxy's SSH key)
    its secret box."""
    tls_files = core_tls_files(core.config)
    values = rex_settings.check(settings, tls_files=tls_files)
    apply_ssh_log_level(values["ssh_log_level"])
    box = SecretBox.from_key_file(key_file_beside(values["ssh_identity_key_file"]))
    state = RexState(
        values,
        core.world,
        tls_files=tls_files,
        box=box,
        pull_labels=(RunScript.name(), PullScriptAction.name()),
        pull_action=PullScriptAction,
    )
    core.secret_box = box
    core.extensions.register(RexState, state)
    core.services.append(state)
    core.actions.register(RunScript)
    core.actions.register(PullScriptAction)
    core.launchers.register("ssh", BatchLauncher)
    return state


class RexCorePlugin:
    name = "script"
    settings_names = rex_settings.SETTINGS_NAMES

    def register(self, core: Core, settings: dict[str, Any]) -> None:
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
    _values: dict[str, Any] | None = None
    _known_hosts: KnownHosts | None = None
    _handshakes = LoopSemaphore(MAX_CONCURRENT_HANDSHAKES)  # without an in-process core

    async def start(self) -> None:
        # §2.2, with the proxy's log level at hand; a failure marks the module failed.
        values = rex_settings.check(
            dict(self.settings), self.host.settings.log_level, tls_files=self.tls_files()
        )
        self._values = values
        apply_ssh_log_level(values["ssh_log_level"])  # also for the sessions of this process
        # The key sealing the jobs' passwords (the core plugin made it when it registered): an
        # unusable key file fails this module with what to fix, not only the core's log.
        SecretBox.from_key_file(key_file_beside(values["ssh_identity_key_file"]))
        if values["mode"] in rex_settings.PULL_MODES:
            dynflow = self.host.plugin("dynflow")
            if dynflow is not None and getattr(dynflow, "core", None) is None:
                log.warning(
                    "mode %s with an external dynflow core: hosts cannot fetch their jobs "
                    "through this proxy (/ssh/jobs answers 501); run the dynflow plugin "
                    "in-process for pull mode",
                    values["mode"],
                )

    def tls_files(self) -> rex_settings.TlsFiles:
        """The proxy's client certificate, key and CA (``foreman_ssl_*``, else ``ssl_*``)."""
        proxy = self.host.settings
        pair = proxy.foreman_client_cert()
        return rex_settings.TlsFiles(proxy.foreman_ca(), *(pair or (None, None)))

    def in_process_core(self) -> Core | None:
        """The Smart Proxy's in-process dynflow core (None: external, or not running)."""
        dynflow = self.host.plugin("dynflow")
        core = getattr(dynflow, "core", None) if dynflow is not None else None
        return core if isinstance(core, Core) else None

    def pull_state(self) -> RexState | Response:
        """The in-process core's ``RexState`` the pull endpoints work on, or the answer
        explaining why there is none."""
        core = self.in_process_core()
        if core is None:
            dynflow = self.host.plugin("dynflow")
            if dynflow is not None and getattr(dynflow, "relay", None) is not None:
                return JSONResponse(
                    {
                        "error": "Pull-mode jobs live in the external smart-proxy-dynflow-core "
                        "(external_core: true), which this proxy does not forward /ssh/jobs "
                        "to; run the dynflow plugin in-process for pull mode"
                    },
                    status_code=501,
                )
            return JSONResponse({"error": "the dynflow plugin is not running"}, status_code=503)
        state = core.extensions.get(RexState)
        if state is None:
            return JSONResponse(
                {"error": "the script plugin is not registered in the dynflow core (see /logs)"},
                status_code=503,
            )
        return state

    def ssh_settings(self) -> dict[str, Any]:
        """The checked settings (defaults filled in, key paths expanded)."""
        return self._values if self._values is not None else rex_settings.effective(self.settings)

    def known_hosts(self) -> KnownHosts:
        """The host keys of the in-process core (shared with its jobs), else the plugin's own."""
        core = self.in_process_core()
        state = core.extensions.get(RexState) if core is not None else None
        if state is not None:
            return state.known_hosts
        if self._known_hosts is None:
            # Only with cockpit_integration, which loads asyncssh anyway (see asgi_app).
            from .known_hosts import KnownHosts  # noqa: PLC0415 - defers asyncssh

            self._known_hosts = KnownHosts.from_settings(self.ssh_settings())
        return self._known_hosts

    def handshake_slots(self) -> asyncio.Semaphore:
        """The bound on SSH handshakes under way: the in-process core's (its jobs and the
        console's sessions share it), else the plugin's own."""
        core = self.in_process_core()
        state = core.extensions.get(RexState) if core is not None else None
        if state is not None:
            return state.handshake_slots()
        return self._handshakes.get()

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

        routes = [
            Route("/pubkey", pubkey, methods=["GET"]),
            Route("/ca_pubkey", ca_pubkey, methods=["GET"]),
            *PullApi(self.pull_state).routes(),
        ]
        if self.settings.get("cockpit_integration"):
            # asyncssh and the raw takeover are loaded only for the opt-in web console.
            from .cockpit import CockpitSession  # noqa: PLC0415 - defers asyncssh (opt-in)

            session = CockpitSession(
                self.host.authorizer.authorize_any,
                self.ssh_settings,
                self.known_hosts,
                self.handshake_slots,
            )
            routes.append(Route("/session", session, methods=["POST"]))
        return Starlette(routes=routes)
