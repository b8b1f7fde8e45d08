"""The ``dynflow`` plugin of the Smart Proxy (``settings.d/dynflow.yml``).

Two ways to serve ``/dynflow/*``:

* **in-process** (default): the plugin runs a :class:`~smart_proxy_dynflow.core.Core` inside the
  proxy and mounts the task API with the proxy's ``authorize_any`` (one-time passwords on
  update/done as in the standalone service);
* **relay** (``external_core: true``): every request is forwarded to the standalone
  ``smart-proxy-dynflow-core`` at ``core_url`` (:mod:`smart_proxy_dynflow.relay`).

Other proxy plugins that bring actions (the SSH plugin) declare ``requires = {"dynflow": ...}``
and register into ``host.plugin("dynflow").core`` when they start. The launcher operations are
advertised as capabilities in ``/v2/features``; while the in-process core's database cannot be
used, the entry also has a ``note`` naming the cause (its state stays ``running``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, ClassVar, Literal

import httpx

from smart_proxy.authorization import Authorizer
from smart_proxy.plugin import Plugin, Validation
from smart_proxy.settings import SettingsError, read_settings_file
from smart_proxy.validators import ConfigurationError

from .api import DEFAULT_MAX_BODY, create_app
from .console import ConsoleAccess
from .core import Core, CoreConfig
from .plugin import load_plugins
from .relay import Relay
from .settings import RETIRED_CALLBACK_TIMEOUT, database_url

log = logging.getLogger("smart_proxy_dynflow.plugin")

try:
    VERSION = package_version("smart-proxy-dynflow")
except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
    VERSION = "0.0.0"


def _operations(plugin: DynflowPlugin) -> list[str]:
    return plugin.operations()


def positive_number(setting: str, value: Any, args: Any, settings: Mapping[str, Any]) -> None:
    """A number above zero (an integer when ``args == "int"``)."""
    kinds: tuple[type[int | float], ...] = (int,) if args == "int" else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        expected = "a positive integer" if args == "int" else "a positive number"
        raise ConfigurationError(f"Parameter '{setting}' must be {expected}, got {value!r}")


def host_list_setting(setting: str, value: Any, args: Any, settings: Mapping[str, Any]) -> None:
    """Unset, or a list of host names (certificate CNs; one name alone is a list of one)."""
    if value is None or (isinstance(value, str) and value.strip()):
        return
    if not isinstance(value, list) or not all(
        isinstance(entry, str) and entry.strip() for entry in value
    ):
        raise ConfigurationError(
            f"Parameter '{setting}' must be a list of host names (certificate CNs), "
            f"got {value!r}"
        )


def database_setting(setting: str, value: Any, args: Any, settings: Mapping[str, Any]) -> None:
    if value is not None and not isinstance(value, str):
        raise ConfigurationError(
            f"Parameter '{setting}' must be a file path, ':memory:' or a database URL"
        )


class DynflowPlugin(Plugin):
    name = "dynflow"
    version = VERSION
    settings_file = "dynflow.yml"
    mount_path = "/dynflow"
    default_settings: ClassVar[dict[str, Any]] = {
        "console_auth": True,
        "console_http": False,
        "execution_plan_cleaner_age": 1800,
        "core_url": "http://localhost:8008",
        "external_core": False,
        "pool_size": 5,
        "runner_refresh_interval": 1.0,
        "callback_retry_interval": 2.0,
        "callback_retry_max_interval": 300.0,
        "callback_retry_window": 600.0,
        "max_body_size": DEFAULT_MAX_BODY,
    }
    validations: ClassVar[list[Validation]] = [
        Validation("external_core", "boolean"),
        Validation("console_auth", "boolean"),
        Validation("console_http", "boolean"),
        Validation("console_trusted_hosts", host_list_setting),
        Validation("core_url", "url", when=lambda settings: bool(settings.get("external_core"))),
        Validation("database", database_setting),
        Validation("pool_size", positive_number, args="int"),
        Validation("max_body_size", positive_number, args="int"),
        *(
            Validation(key, positive_number)
            for key in (
                "execution_plan_cleaner_age",
                "runner_refresh_interval",
                "callback_retry_interval",
                "callback_retry_max_interval",
                "callback_retry_window",
            )
        ),
    ]
    capabilities: ClassVar[list[Any]] = [_operations]

    core: Core | None = None
    relay: Relay | None = None
    _relay_operations: list[str]

    @property
    def external(self) -> bool:
        return bool(self.settings.get("external_core"))

    def core_config(self) -> CoreConfig:
        if "callback_retry_timeout" in self.settings:
            log.warning(RETIRED_CALLBACK_TIMEOUT)
        proxy = self.host.settings
        cert = proxy.foreman_client_cert()
        return CoreConfig(
            db_url=database_url(self.settings.get("database")),
            pool_size=int(self.settings["pool_size"]),
            execution_plan_cleaner_age=float(self.settings["execution_plan_cleaner_age"]),
            runner_refresh_interval=float(self.settings["runner_refresh_interval"]),
            foreman_url=proxy.foreman_url or "https://127.0.0.1:3000",
            foreman_ssl_ca=proxy.foreman_ca(),
            foreman_ssl_cert=cert[0] if cert else None,
            foreman_ssl_key=cert[1] if cert else None,
            callback_retry_interval=float(self.settings["callback_retry_interval"]),
            callback_retry_max_interval=float(self.settings["callback_retry_max_interval"]),
            callback_retry_window=float(self.settings["callback_retry_window"]),
        )

    async def start(self) -> None:
        if self.external:
            proxy = self.host.settings
            cert = proxy.foreman_client_cert()
            self.relay = Relay(
                str(self.settings["core_url"]),
                authorize=self.host.authorizer.authorize_any,
                cafile=proxy.foreman_ca(),
                certfile=cert[0] if cert else None,
                keyfile=cert[1] if cert else None,
                console=self.console_access(),
                max_body_size=int(self.settings["max_body_size"]),
            )
            self._relay_operations = []
            self._refresher = asyncio.create_task(self._refresh_operations())
            log.info("Dynflow requests are relayed to %s", self.settings["core_url"])
            return
        self.core = Core(self.core_config())
        # Core plugins (entry points of smart_proxy_dynflow.plugins) load here as they do in
        # the standalone service, from the proxy's settings.d.
        self.core_plugins = load_plugins(self.core, self.plugin_settings())
        await self.core.start()

    def plugin_settings(self) -> dict[str, dict[str, Any]]:
        """Every readable ``settings.d/*.yml`` by name (broken files are the host's to report)."""
        directory = Path(self.host.settings.settings_directory)
        result: dict[str, dict[str, Any]] = {}
        for path in sorted(directory.glob("*.yml")):
            try:
                result[path.stem] = read_settings_file(path)
            except SettingsError:
                continue
        return result

    async def stop(self) -> None:
        if self.relay is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            await self.relay.aclose()
        if self.core is not None:
            await self.core.stop()

    def asgi_app(self, protocol: Literal["http", "https"]) -> Any:
        if self.relay is not None:
            return self.relay.app()
        assert self.core is not None
        return create_app(
            self.core,
            authorize=self.host.authorizer.authorize_any,
            max_body_size=int(self.settings["max_body_size"]),
            console=self.console_access(),
        )

    def state_note(self) -> str | None:
        """While the database cannot be used: its cause and since when (``/v2/features``)."""
        failure = self.core.world.store_failure() if self.core is not None else None
        if failure is None:
            return None
        since = datetime.fromtimestamp(failure.since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return (
            f"the database cannot be used since {since} ({failure.cause}); requests that must "
            "be stored get 503"
        )

    def console_access(self) -> ConsoleAccess:
        """``/dynflow/console``: with ``console_auth`` the task API's checks (the proxy's
        authorizer: ``trusted_hosts`` and, over HTTPS, a client certificate), or
        ``console_trusted_hosts`` instead of ``trusted_hosts`` when set; over HTTP only with
        ``console_http``. (The original applied no trusted-hosts check to its console.)"""
        hosts = self.settings.get("console_trusted_hosts")
        authorizer = self.host.authorizer
        if hosts is not None:
            if isinstance(hosts, str):
                hosts = [hosts]
            authorizer = Authorizer(
                [host.strip() for host in hosts],
                self.host.settings.forward_verify,
                setting_hint=":console_trusted_hosts: in settings.d/dynflow.yml",
            )
            if not self.settings["console_auth"]:
                log.warning("console_trusted_hosts has no effect with console_auth: false")
        return ConsoleAccess(
            console_auth=bool(self.settings["console_auth"]),
            console_http=bool(self.settings["console_http"]),
            check_client=authorizer.refusal,
            settings_file="settings.d/dynflow.yml",
        )

    def operations(self) -> list[str]:
        if self.core is not None:
            return self.core.operations()
        return list(getattr(self, "_relay_operations", []))

    async def _refresh_operations(self) -> None:
        """Learn the core's operations for ``/v2/features`` (again every few minutes)."""
        assert self.relay is not None
        while True:
            delay = 300.0
            try:
                answer = await self.relay.client.get(
                    self.relay.core_url + "/tasks/operations",
                    headers={"Accept": "application/json"},
                )
                if answer.status_code == 200 and isinstance(answer.json(), list):
                    self._relay_operations = [str(op) for op in answer.json()]
                else:
                    delay = 10.0
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("cannot read the operations of the Dynflow core: %s", exc)
                delay = 10.0
            await asyncio.sleep(delay)
