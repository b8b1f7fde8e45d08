"""The plugin host: plugin initialization (§6), lifecycle, and the per-protocol apps (§7).

::

    host = Host(settings)               # plugins from entry points (+ the built-in ``logs``)
    await host.initialize()             # settings, validation, requirements, start()
    app = host.dispatch_app()           # one ASGI app; picks the HTTP or HTTPS app per request
    ...
    await host.shutdown()               # stop() in reverse start order

Initialization, per plugin (states ``uninitialized`` → ``disabled`` | ``starting`` →
``running`` | ``failed``):

1. read ``<settings_directory>/<settings_file>`` (missing: a warning and the defaults; invalid
   YAML, not a mapping, or an ``enabled`` other than true/false/'http'/'https': ``failed``);
2. merge ``{"enabled": False}``, the plugin's ``default_settings`` and the file (the file wins);
   not enabled → ``disabled``; enabled → run the validations (any failure: ``failed``) →
   ``starting``;
3. check ``requires`` of every starting plugin against the other *enabled* plugins and their
   versions (repeated until nothing changes, since a failure may break another plugin);
4. start the plugins in dependency order: create the instance, ``await start()``, build its
   apps; any exception → ``failed`` (and ``stop()`` is awaited so it can clean up). Unlike the
   original legacy loader (QUIRK §6.4), a failing plugin is never left half-running;
5. check the requirements again; a running plugin whose requirement failed is stopped and
   ``failed``.

A failure sets both ports false, records the message in :attr:`Host.failed_modules` (reported by
``GET /logs``) and logs "Disabling all modules in the group ['x'] due to a failure in one of
them: ..." at ERROR. Other plugins are not affected.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount

from smart_proxy.authorization import Authorizer
from smart_proxy.log import RequestLogMiddleware
from smart_proxy.log_buffer import LogBuffer
from smart_proxy.plugin import (
    Plugin,
    PluginSettings,
    Protocol,
    RequirementError,
    check_plugin_class,
    discover_plugins,
    display_version,
    parse_enabled,
    version_matches,
)
from smart_proxy.server import ASGIApp, Receive, Scope, Send, is_https
from smart_proxy.settings import ProxySettings, SettingsError, read_settings_file
from smart_proxy.validators import ConfigurationError, validate_settings

log = logging.getLogger("smart_proxy.host")

NOT_FOUND = "Requested url was not found"
PROTOCOLS: tuple[Protocol, ...] = ("http", "https")

session_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("session_id", default=None)


class PluginState(enum.StrEnum):
    UNINITIALIZED = "uninitialized"
    DISABLED = "disabled"
    STARTING = "starting"
    RUNNING = "running"
    FAILED = "failed"


_ENABLED_STATES = (PluginState.STARTING, PluginState.RUNNING)


@dataclass
class PluginRecord:
    """The registry entry of one plugin (§6.1)."""

    name: str
    version: str
    plugin_class: type[Plugin] | None
    state: PluginState = PluginState.UNINITIALIZED
    http_enabled: bool = False
    https_enabled: bool = False
    settings: dict[str, Any] | None = None  # effective settings, None until loaded
    instance: Plugin | None = None
    error: str | None = None
    settings_path: str | None = None
    apps: dict[str, ASGIApp] = field(default_factory=dict)

    @property
    def capabilities(self) -> list[Any]:
        """The declared capabilities, as declared (strings and callables)."""
        return list(self.plugin_class.capabilities) if self.plugin_class else []

    @property
    def exposed_settings(self) -> dict[str, Any]:
        """The values of the plugin's ``exposed_settings`` ({} before its settings are loaded)."""
        if self.plugin_class is None or self.settings is None:
            return {}
        return {key: self.settings.get(key) for key in self.plugin_class.exposed_settings}

    @property
    def requires(self) -> Mapping[str, str]:
        return self.plugin_class.requires if self.plugin_class else {}

    def evaluated_capabilities(self) -> list[str]:
        """Capabilities as reported by ``/v2/features``: [] while uninitialized; callables only
        while running (a failing callable is logged and left out); flattened, de-duplicated,
        None-free, sorted."""
        if self.state == PluginState.UNINITIALIZED:
            return []
        found: set[str] = set()
        for capability in self.capabilities:
            if callable(capability):
                if self.state != PluginState.RUNNING or self.instance is None:
                    continue
                try:
                    value = capability(self.instance)
                except Exception:
                    log.exception("Capability of plugin '%s' failed", self.name)
                    continue
            else:
                value = capability
            found.update(_flatten(value))
        return sorted(found)


def _flatten(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple | set | frozenset):
        return [item for element in value for item in _flatten(element)]
    return [str(value)]


def builtin_plugins() -> list[type[Plugin]]:
    """Plugins every host has, whatever the entry points say (the ``logs`` module)."""
    from smart_proxy.root import LogsPlugin

    return [LogsPlugin]


# ---- ASGI helpers -------------------------------------------------------------------------------


class SessionIdMiddleware:
    """Takes ``X-Session-Id`` (or a fresh uuid) into :data:`session_id` and
    ``scope["state"]["session_id"]`` for the request (Foreman correlates its logs with it)."""

    _ALLOWED = re.compile(r"[^A-Za-z0-9._:\-]")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        value = ""
        for name, raw in scope.get("headers") or []:
            if name.lower() == b"x-session-id":
                value = self._ALLOWED.sub("", raw.decode("latin-1"))[:128]
                break
        sid = value or uuid.uuid4().hex
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["session_id"] = sid
        token = session_id.set(sid)
        try:
            await self.app(scope, receive, send)
        finally:
            session_id.reset(token)


class SessionFilter(logging.Filter):
    """Adds ``session_id`` to records (the ``%X{session}`` pattern field)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "session_id"):
            record.session_id = session_id.get()
        return True


class _MountRoots:
    """Serves a mount's bare prefix (``/logs``) like its root (``/logs/``), without a redirect:
    Foreman asks for ``/logs?from_timestamp=...``."""

    def __init__(self, app: ASGIApp, prefixes: Sequence[str]) -> None:
        self.app = app
        self.prefixes = {prefix.rstrip("/") for prefix in prefixes if prefix.rstrip("/")}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") in self.prefixes:
            scope = dict(scope)
            scope["path"] = scope["path"] + "/"
            raw = scope.get("raw_path")
            if isinstance(raw, bytes) and not raw.endswith(b"/"):
                scope["raw_path"] = raw + b"/"
        await self.app(scope, receive, send)


class ProtocolDispatch:
    """One ASGI app for every listener: HTTPS connections get ``https``, the others ``http``."""

    def __init__(self, http: ASGIApp, https: ASGIApp) -> None:
        self.http = http
        self.https = https

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            while True:
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
                message = await receive()
        app = self.https if is_https(scope) else self.http
        await app(scope, receive, send)


async def _not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": NOT_FOUND}, status_code=404)


# ---- the host -----------------------------------------------------------------------------------


class Host:
    """The Smart Proxy's plugin registry and lifecycle (see the module docstring).

    ``plugin_classes``: None loads the built-in plugins plus every ``smart_proxy.plugins`` entry
    point; a sequence uses exactly those classes (tests).
    """

    def __init__(
        self,
        settings: ProxySettings,
        plugin_classes: Sequence[type[Plugin]] | None = None,
        *,
        log_buffer: LogBuffer | None = None,
    ) -> None:
        self.settings = settings
        self.authorizer = Authorizer(settings.trusted_hosts, settings.forward_verify)
        self.log_buffer = log_buffer or LogBuffer(
            settings.log_buffer, settings.log_buffer_errors, settings.log_level
        )
        self.plugins: dict[str, PluginRecord] = {}
        self.failed_modules: dict[str, str] = {}
        self._plugin_classes = list(plugin_classes) if plugin_classes is not None else None
        self._started: list[PluginRecord] = []
        self._initialized = False
        self._stopped = False
        self._apps: dict[str, ASGIApp] = {}

    # ---- queries --------------------------------------------------------------------------------

    def plugin(self, name: str) -> Plugin | None:
        """The running instance of plugin ``name``, None if it is not running."""
        record = self.plugins.get(name)
        if record is None or record.state != PluginState.RUNNING:
            return None
        return record.instance

    def running(self) -> list[PluginRecord]:
        return [r for r in self.plugins.values() if r.state == PluginState.RUNNING]

    # ---- initialization -------------------------------------------------------------------------

    def _classes(self) -> tuple[list[type[Plugin]], dict[str, str]]:
        if self._plugin_classes is not None:
            return list(self._plugin_classes), {}
        classes = builtin_plugins()
        discovered = discover_plugins()
        for cls in discovered.classes:
            if cls not in classes:
                classes.append(cls)
        return classes, discovered.errors

    def _register(self) -> None:
        classes, errors = self._classes()
        for cls in classes:
            try:
                check_plugin_class(cls)
            except ValueError as exc:
                name = getattr(cls, "name", "") or getattr(cls, "__name__", repr(cls))
                record = self.plugins.setdefault(name, PluginRecord(name, "", None))
                self._fail(record, str(exc))
                continue
            if cls.name in self.plugins:
                other = self.plugins[cls.name].plugin_class
                log.error(
                    "Plugin name '%s' is declared twice (%s and %s); ignoring the second",
                    cls.name,
                    getattr(other, "__qualname__", other),
                    cls.__qualname__,
                )
                continue
            self.plugins[cls.name] = PluginRecord(cls.name, display_version(cls.version), cls)
        for name, message in errors.items():
            if name in self.plugins:
                continue
            self._fail(self.plugins.setdefault(name, PluginRecord(name, "", None)), message)

    async def initialize(self) -> None:
        """Run the initialization (§6.2) once; see the module docstring."""
        if self._initialized:
            raise RuntimeError("the host is already initialized")
        self._initialized = True
        self._register()
        for record in list(self.plugins.values()):
            if record.state == PluginState.UNINITIALIZED:
                self._load_settings(record)
        await self._check_requirements()
        for record in self._start_order():
            if record.state != PluginState.STARTING:
                continue
            problem = self._requirement_problem(record)
            if problem is not None:
                self._fail(record, problem)
                continue
            await self._start(record)
        await self._check_requirements()
        self._apps.clear()
        running = ", ".join(sorted(r.name for r in self.running())) or "none"
        log.info("Plugins running: %s", running)

    def _load_settings(self, record: PluginRecord) -> None:
        cls = record.plugin_class
        assert cls is not None
        path = Path(self.settings.settings_directory) / cls.settings_file_name()
        record.settings_path = str(path)
        data: dict[str, Any] = {}
        if path.exists():
            try:
                data = read_settings_file(path)
            except SettingsError as exc:
                self._fail(record, str(exc))
                return
        else:
            log.warning("Couldn't find settings file %s. Using default settings.", path)
        merged = {"enabled": False, **dict(cls.default_settings), **data}
        record.settings = merged
        try:
            http, https = parse_enabled(merged["enabled"])
        except ValueError as exc:
            self._fail(record, f"{path}: enabled: {exc}")
            return
        log.debug("'%s' settings: %s", record.name, self._describe_settings(cls, merged))
        log.debug(
            "'%s' ports: 'http': %s, 'https': %s",
            record.name,
            str(http).lower(),
            str(https).lower(),
        )
        if not (http or https):
            record.state = PluginState.DISABLED
            return
        try:
            validate_settings(
                merged,
                defaults=cls.default_settings,
                validations=cls.validations,
                custom=cls.validators,
            )
        except ConfigurationError as exc:
            self._fail(record, f"{path}: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - a plugin's broken validator fails that plugin
            self._fail(record, f"{path}: validation failed: {exc}", exc)
            return
        record.http_enabled, record.https_enabled = http, https
        record.state = PluginState.STARTING

    @staticmethod
    def _describe_settings(cls: type[Plugin], settings: Mapping[str, Any]) -> str:
        parts = []
        for key in sorted(settings):
            value = settings[key]
            default = " (default)" if key in cls.default_settings or key == "enabled" else ""
            if default and cls.default_settings.get(key, False) != value:
                default = ""
            parts.append(f"'{key}': {value!r}{default}")
        return ", ".join(parts)

    def _requirement_problem(self, record: PluginRecord) -> str | None:
        for name, spec in record.requires.items():
            if name == record.name:
                continue
            other = self.plugins.get(name)
            if other is None:
                return f"'{name}' required by '{record.name}' could not be found."
            if other.state == PluginState.FAILED:
                return f"'{name}' required by '{record.name}' failed to initialize."
            if other.state not in _ENABLED_STATES:
                return f"'{name}' required by '{record.name}' is not enabled."
            try:
                matches = version_matches(other.version, spec)
            except RequirementError as exc:
                return f"'{record.name}': {exc} for '{name}'"
            except ValueError:
                matches = False
            if not matches:
                return (
                    f"Available version '{other.version}' of '{name}' doesn't match version "
                    f"'{spec}' required by '{record.name}'"
                )
        return None

    async def _check_requirements(self) -> None:
        """Fail every enabled plugin whose requirements do not hold, until nothing changes."""
        changed = True
        while changed:
            changed = False
            for record in list(self.plugins.values()):
                if record.state not in _ENABLED_STATES:
                    continue
                problem = self._requirement_problem(record)
                if problem is None:
                    continue
                if record.state == PluginState.RUNNING:
                    await self._stop_instance(record)
                self._fail(record, problem)
                changed = True

    def _start_order(self) -> list[PluginRecord]:
        """Plugins sorted so that requirements start first (registration order otherwise;
        members of a requirement cycle keep registration order)."""
        records = list(self.plugins.values())
        order: list[PluginRecord] = []
        placed: set[str] = set()
        pending = records
        while pending:
            progress = False
            remaining = []
            for record in pending:
                deps = [
                    name
                    for name in record.requires
                    if name in self.plugins and name != record.name and name not in placed
                ]
                if deps:
                    remaining.append(record)
                else:
                    order.append(record)
                    placed.add(record.name)
                    progress = True
            if not progress:
                order.extend(remaining)
                break
            pending = remaining
        return order

    async def _start(self, record: PluginRecord) -> None:
        cls = record.plugin_class
        assert cls is not None and record.settings is not None
        try:
            instance = cls(self, PluginSettings(record.settings))
        except Exception as exc:  # noqa: BLE001 - a failing plugin is set aside, not the host
            self._fail(record, f"cannot create the plugin: {_describe(exc)}", exc)
            return
        record.instance = instance
        try:
            await instance.start()
            apps: dict[str, ASGIApp] = {}
            for protocol in PROTOCOLS:
                if not getattr(record, f"{protocol}_enabled"):
                    continue
                app = instance.asgi_app(protocol)
                if app is None:
                    continue
                if not cls.mount_path:
                    raise ConfigurationError(
                        f"plugin '{record.name}' serves {protocol} but declares no mount_path"
                    )
                apps[protocol] = app
        except asyncio.CancelledError:
            await self._stop_instance(record)
            record.instance = None
            raise
        except Exception as exc:  # noqa: BLE001 - a plugin failing to start is set aside
            await self._stop_instance(record)
            record.instance = None
            self._fail(record, _describe(exc), exc)
            return
        record.apps = apps
        record.state = PluginState.RUNNING
        self._started.append(record)
        log.info("Successfully initialized '%s'", record.name)

    def _fail(self, record: PluginRecord, message: str, exc: BaseException | None = None) -> None:
        record.state = PluginState.FAILED
        record.http_enabled = record.https_enabled = False
        record.error = message
        record.apps = {}
        self.failed_modules[record.name] = message
        self._apps.clear()
        log.error(
            "Disabling all modules in the group ['%s'] due to a failure in one of them: %s",
            record.name,
            message,
            exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None,
        )

    async def _stop_instance(self, record: PluginRecord) -> None:
        instance = record.instance
        if instance is None:
            return
        try:
            await instance.stop()
        except Exception:
            log.exception("Error while stopping plugin '%s'", record.name)

    async def shutdown(self) -> None:
        """Stop the running plugins in reverse start order (once; errors are logged)."""
        if self._stopped:
            return
        self._stopped = True
        for record in reversed(self._started):
            if record.state == PluginState.RUNNING:
                await self._stop_instance(record)
                log.debug("Stopped plugin '%s'", record.name)

    # ---- apps -----------------------------------------------------------------------------------

    def asgi_app(self, protocol: Protocol) -> ASGIApp:
        """The app of one protocol: the root endpoints plus every running plugin enabled on
        ``protocol`` mounted at its ``mount_path``; unknown routes give a JSON 404."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}")
        cached = self._apps.get(protocol)
        if cached is not None:
            return cached
        from smart_proxy.root import root_routes

        routes: list[BaseRoute] = list(root_routes(self))
        prefixes = []
        for record in self.running():
            plugin_app = record.apps.get(protocol)
            if plugin_app is None or record.plugin_class is None:
                continue
            prefix = str(record.plugin_class.mount_path).rstrip("/")
            routes.append(Mount(prefix, app=plugin_app, name=record.name))
            prefixes.append(prefix)
        starlette = Starlette(
            routes=routes,
            exception_handlers={404: _not_found},
        )
        app: ASGIApp = SessionIdMiddleware(RequestLogMiddleware(_MountRoots(starlette, prefixes)))
        self._apps[protocol] = app
        return app

    def dispatch_app(self) -> ASGIApp:
        """One app for all listeners, choosing the HTTP or HTTPS app by the connection."""
        return ProtocolDispatch(self.asgi_app("http"), self.asgi_app("https"))

    def mounted(self, protocol: Protocol) -> dict[str, str]:
        """Mount path → plugin name of ``protocol``'s app."""
        return {
            str(r.plugin_class.mount_path): r.name
            for r in self.running()
            if r.plugin_class is not None and protocol in r.apps
        }


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return text if text else type(exc).__name__


__all__ = [
    "Host",
    "PluginRecord",
    "PluginState",
    "ProtocolDispatch",
    "SessionFilter",
    "SessionIdMiddleware",
    "builtin_plugins",
    "session_id",
]
