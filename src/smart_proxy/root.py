"""The core endpoints (§9): ``/features``, ``/version``, ``/v2/features`` and the ``logs`` module.

* ``GET /features`` (open): sorted names of the running plugins.
* ``GET /version`` (open): ``{"version": <proxy version>, "modules": {name: version}}`` for the
  running plugins.
* ``GET /v2/features`` (trusted hosts + client certificate): every plugin, whatever its state,
  with ``state``, ``http_enabled``, ``https_enabled``, ``settings`` (the exposed ones) and
  ``capabilities``; a running plugin with a problem (:meth:`Plugin.state_note`, e.g. the
  ``dynflow`` plugin while its database cannot be used) adds ``note``, a one-line text. Its
  ``state`` stays ``running``: Foreman keeps only running features when it refreshes a proxy,
  and a database outage must not make it forget Dynflow (the original had no such report; a
  plugin that failed to start is ``failed``, as before).
* ``GET /logs/?from_timestamp=<epoch>`` (module ``logs``; trusted hosts + client certificate):
  the log buffer and the ``failed_modules`` map.
"""

from __future__ import annotations

import logging
import math
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as distribution_version
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from smart_proxy.plugin import Plugin, Protocol, display_version
from smart_proxy.server import ASGIApp

if TYPE_CHECKING:
    from smart_proxy.host import Host

log = logging.getLogger("smart_proxy.root")

DISTRIBUTION = "smart-proxy-dynflow"


def proxy_version() -> str:
    """The proxy's version (the installed distribution's, ``-develop`` dropped)."""
    try:
        return display_version(distribution_version(DISTRIBUTION))
    except PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
        return "0.0.0"


VERSION = proxy_version()


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def root_routes(host: Host) -> list[BaseRoute]:
    """The routes of the root module, bound to ``host``."""

    async def features(request: Request) -> Response:
        try:
            names = sorted(record.name for record in host.running())
        except Exception as exc:
            log.exception("Failed to list features")
            return _error(f"Failed to list features: {exc}", 400)
        return JSONResponse(names)

    async def version(request: Request) -> Response:
        modules = {record.name: record.version for record in host.running()}
        return JSONResponse({"version": VERSION, "modules": dict(sorted(modules.items()))})

    async def v2_features(request: Request) -> Response:
        denied = await host.authorizer.authorize_any(request)
        if denied is not None:
            return denied
        try:
            result: dict[str, Any] = {}
            for name in sorted(host.plugins):
                record = host.plugins[name]
                result[name] = {
                    "http_enabled": record.http_enabled,
                    "https_enabled": record.https_enabled,
                    "settings": record.exposed_settings,
                    "state": str(record.state),
                    "capabilities": record.evaluated_capabilities(),
                }
                note = _state_note(record)
                if note:
                    result[name]["note"] = note
            return JSONResponse(result)
        except Exception as exc:
            log.exception("Failed to list features")
            return _error(f"Failed to list features: {exc}", 500)

    return [
        Route("/features", features, methods=["GET"]),
        Route("/version", version, methods=["GET"]),
        Route("/v2/features", v2_features, methods=["GET"]),
    ]


def _state_note(record: Any) -> str | None:
    if str(record.state) != "running" or record.instance is None:
        return None
    try:
        return record.instance.state_note()
    except Exception:
        log.exception("State note of plugin '%s' failed", record.name)
        return None


class LogsPlugin(Plugin):
    """The built-in ``logs`` module: ``GET /logs/`` serves the host's log buffer."""

    name = "logs"
    version = VERSION
    default_settings = {"enabled": True}
    mount_path = "/logs"

    def asgi_app(self, protocol: Protocol) -> ASGIApp | None:
        return Starlette(routes=[Route("/", self.logs, methods=["GET"])])

    async def logs(self, request: Request) -> Response:
        denied = await self.host.authorizer.authorize_any(request)
        if denied is not None:
            return denied
        raw = request.query_params.get("from_timestamp", "").strip()
        try:
            from_timestamp = float(raw) if raw else 0.0
        except ValueError:
            return _error(f"from_timestamp must be a number, got {raw!r}", 400)
        if not math.isfinite(from_timestamp):
            return _error(f"from_timestamp must be a finite number, got {raw!r}", 400)
        return JSONResponse(self.host.log_buffer.report(from_timestamp, self.host.failed_modules))
