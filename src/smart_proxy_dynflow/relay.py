"""The relay: the Smart Proxy forwards ``/dynflow/*`` to a standalone core service (§8.1).

Used when ``settings.d/dynflow.yml`` says ``external_core: true``. Every GET and POST below
``/dynflow`` goes to ``core_url`` with the ``/dynflow`` prefix removed, keeping the query and the
raw body. Outgoing headers: ``X-Forwarded-For`` (the incoming ``Host``, which the core uses for
callbacks), ``Authorization`` (a host's one-time password), ``X-Request-Id``, ``Accept`` and
``Content-Type``. Status, content type and body come back unchanged. Towards an https core the
proxy presents its client certificate (``foreman_ssl_cert``, else ``ssl_certificate``: the serial
the core accepts) and verifies the core against ``foreman_ssl_ca``/``ssl_ca_file``.

Authorization happens here, before anything is forwarded: the proxy's ``authorize_any`` for
every request, except ``/tasks/:id/update`` and ``/done`` carrying an ``Authorization`` header,
whose token only the core can check. A core that cannot be reached gives 502 JSON.
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

from smart_proxy.log import request_id
from smart_proxy.tls import client_context

log = logging.getLogger("smart_proxy_dynflow.relay")

Authorize = Callable[[Request], Awaitable[Response | None]]
TOKEN_PATH = re.compile(r"/tasks/\S+/(update|done)")


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
    ) -> None:
        self.core_url = core_url.rstrip("/")
        self.authorize = authorize
        verify: Any = True
        if self.core_url.startswith("https:"):
            verify = client_context(cafile=cafile, certfile=certfile, keyfile=keyfile)
        self.client = httpx.AsyncClient(verify=verify, timeout=timeout)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def forward(self, request: Request) -> Response:
        path = "/" + request.path_params.get("path", "")
        token = TOKEN_PATH.search(path) and "authorization" in request.headers
        if not token:
            denied = await self.authorize(request)
            if denied is not None:
                return denied
        headers = {
            "X-Forwarded-For": request.headers.get("host", ""),
            "Accept": "application/json,version=2",
            "Content-Type": "application/json",
        }
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
                content=await request.body() if request.method == "POST" else None,
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
