"""The relay: the Smart Proxy forwards ``/dynflow/*`` to a standalone core service (§8.1).

Used when ``settings.d/dynflow.yml`` says ``external_core: true``. Every GET and POST below
``/dynflow`` goes to ``core_url`` with the ``/dynflow`` prefix removed, keeping the query and the
raw body. Outgoing headers: ``X-Forwarded-For`` (the incoming ``Host``, which the core uses for
callbacks), ``Authorization`` (a host's one-time password), ``X-Request-Id``, ``Accept`` and
the request's own ``Content-Type`` (the core accepts only JSON bodies). A browser's cross-site
request (``Sec-Fetch-Site``, a foreign ``Origin``: :func:`smart_proxy.json_body.
cross_site_denial`) is refused here with 403, as the core would; bodies are capped at the
plugin's ``max_body_size`` (413; keep it no larger than the core's). Status, content type
and body come back unchanged.
Towards an https core the proxy presents its client certificate (``foreman_ssl_cert``, else
``ssl_certificate``: the serial the core accepts) and verifies the core against
``foreman_ssl_ca``/``ssl_ca_file``.

Authorization happens here, before anything is forwarded: the proxy's ``authorize_any`` for
every request, except ``/tasks/:id/update`` and ``/done`` carrying an ``Authorization`` header,
whose token only the core can check. A core that cannot be reached gives 502 JSON.

The console (``/dynflow/console*``) is checked with the proxy's console settings instead
(``console_auth``, ``console_http``, and ``trusted_hosts`` or ``console_trusted_hosts``: the
plugin's :class:`~.console.ConsoleAccess`) and forwarded as a browser sent it: its own ``Accept``,
``Content-Type``, ``Cookie``, ``Origin`` and ``Sec-Fetch-Site``, plus ``X-Forwarded-Prefix``
(``/dynflow``, so the core's links and redirects point here), ``-Host`` and ``-Proto``; the
core's ``Location``, ``Set-Cookie`` and security headers come back.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from smart_proxy.json_body import JsonBodyError, cross_site_denial, read_body
from smart_proxy.log import request_id
from smart_proxy.server import is_https
from smart_proxy.tls import client_context

from .api import DEFAULT_MAX_BODY
from .console import ConsoleAccess
from .console.app import denied_page

log = logging.getLogger("smart_proxy_dynflow.relay")

Authorize = Callable[[Request], Awaitable[Response | None]]
TOKEN_PATH = re.compile(r"/tasks/\S+/(update|done)")
CONSOLE_PATH = re.compile(r"^/console(/|$)")
CONSOLE_STATIC = "/console/static/"
CONSOLE_REQUEST_HEADERS = ("accept", "content-type", "cookie", "origin", "sec-fetch-site")
CONSOLE_RESPONSE_HEADERS = (
    "location",
    "cache-control",
    "content-security-policy",
    "x-frame-options",
    "x-content-type-options",
    "referrer-policy",
    "etag",
    "last-modified",
)


class Relay:
    def __init__(
        self,
        core_url: str,
        *,
        authorize: Authorize,
        cafile: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        timeout: float = 60.0,
        console: ConsoleAccess | None = None,
        max_body_size: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.core_url = core_url.rstrip("/")
        self.max_body_size = max_body_size
        self.authorize = authorize
        self.console = console or ConsoleAccess()
        verify: Any = True
        if self.core_url.startswith("https:"):
            verify = client_context(cafile=cafile, certfile=certfile, keyfile=keyfile)
        self.client = httpx.AsyncClient(verify=verify, timeout=timeout)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def forward(self, request: Request) -> Response:
        path = "/" + request.path_params.get("path", "")
        if CONSOLE_PATH.match(path):
            return await self.forward_console(request, path)
        cross_site = cross_site_denial(request)
        if cross_site is not None:
            log.warning("refused %s %s: %s", request.method, path, cross_site)
            return JSONResponse({"error": cross_site}, status_code=403)
        token = TOKEN_PATH.search(path) and "authorization" in request.headers
        if not token:
            denied = await self.authorize(request)
            if denied is not None:
                return denied
        headers = {
            "X-Forwarded-For": request.headers.get("host", ""),
            "Accept": "application/json,version=2",
        }
        if "content-type" in request.headers:
            headers["Content-Type"] = request.headers["content-type"]
        content = None
        if request.method == "POST":
            try:
                content = bytes(await read_body(request, self.max_body_size))
            except JsonBodyError as exc:
                return JSONResponse({"error": exc.message}, status_code=exc.status)
        if "authorization" in request.headers:
            headers["Authorization"] = request.headers["authorization"]
        if rid := request_id.get():
            headers["X-Request-Id"] = rid
        target = self.core_url + path
        query = request.url.query
        try:
            answer = await self.client.request(
                request.method,
                target + (f"?{query}" if query else ""),
                content=content,
                headers=headers,
            )
        except httpx.HTTPError as exc:
            log.error("Dynflow core at %s unreachable: %s", self.core_url, exc)
            return JSONResponse(
                {"error": f"The Dynflow core at {self.core_url} is unreachable: {exc}"},
                status_code=502,
            )
        log.debug("Proxied %s %s to %s: %s", request.method, path, target, answer.status_code)
        return Response(
            answer.content,
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type"),
        )

    async def forward_console(self, request: Request, path: str) -> Response:
        """A console page: the proxy's console settings decide, the core renders."""
        if not path.startswith(CONSOLE_STATIC):
            denied = await self.console.denial(request)
            if denied is not None:
                log.warning("console access refused (%s %s): %s", request.method, path, denied)
                return denied_page(request, denied)
        sent = request.headers
        headers = {name: sent[name] for name in CONSOLE_REQUEST_HEADERS if name in sent}
        headers["X-Forwarded-Prefix"] = request.scope.get("root_path", "")
        headers["X-Forwarded-Host"] = request.headers.get("host", "")
        headers["X-Forwarded-Proto"] = "https" if is_https(request.scope) else "http"
        if rid := request_id.get():
            headers["X-Request-Id"] = rid
        query = request.url.query
        try:
            answer = await self.client.request(
                request.method,
                self.core_url + path + (f"?{query}" if query else ""),
                content=await request.body() if request.method == "POST" else None,
                headers=headers,
            )
        except httpx.HTTPError as exc:
            log.error("Dynflow core at %s unreachable: %s", self.core_url, exc)
            return Response(
                f"The Dynflow core at {self.core_url} is unreachable: {exc}",
                status_code=502,
                media_type="text/plain",
            )
        response = Response(
            answer.content,
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type"),
        )
        for name in CONSOLE_RESPONSE_HEADERS:
            if name in answer.headers:
                response.headers[name] = answer.headers[name]
        for cookie in answer.headers.get_list("set-cookie"):
            response.headers.append("set-cookie", cookie)
        return response

    def app(self) -> Starlette:
        async def not_allowed(request: Request) -> Response:
            return JSONResponse(
                {"error": f"method {request.method} not allowed"}, status_code=405
            )

        return Starlette(
            routes=[
                Route("/{path:path}", self.forward, methods=["GET", "POST"]),
                Route("/{path:path}", not_allowed, methods=["PUT", "DELETE", "PATCH"]),
            ]
        )
