"""Real services for API tests: the core behind a real socket, and a fake Foreman.

Both run in the test's event loop but are reached only over TCP (httpx), as Foreman would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from smart_proxy.log import RequestLogMiddleware
from smart_proxy.server import Listener, client_certificate, serve
from smart_proxy_dynflow.api import create_app
from smart_proxy_dynflow.core import Core, CoreConfig

from .local_command import register_test_actions


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    """A running ASGI app: its URL and how to stop it."""

    url: str
    listener: Listener
    task: asyncio.Task[None]
    shutdown: asyncio.Event

    async def stop(self) -> None:
        self.shutdown.set()
        await asyncio.wait_for(self.task, 15)


async def start_app(
    app: Any, port: int = 0, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> Served:
    listener = Listener(host, port, ssl_context)
    ready = asyncio.Event()
    shutdown = asyncio.Event()
    task = asyncio.create_task(serve(app, [listener], on_ready=ready.set, shutdown=shutdown))
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        waiter.cancel()
        task.result()  # raises the startup error
    if waiter not in done:
        task.cancel()
        raise AssertionError("server did not start")
    return Served(listener.url, listener, task, shutdown)


@dataclass
class FakeForeman:
    """Records callbacks; answers ``status`` (200 by default) with ``{"message": "processing"}``."""

    port: int = field(default_factory=free_port)
    status: int = 200
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    served: Served | None = None
    ssl_context: ssl.SSLContext | None = None
    client_cns: list[str | None] = field(default_factory=list)

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def app(self) -> Starlette:
        async def callback(request: Request) -> JSONResponse:
            body = await request.body()
            cert = client_certificate(request.scope)
            self.client_cns.append(cert.subject_cn if cert is not None else None)
            self.requests.append({"headers": dict(request.headers), "body": body})
            if self.status != 200:
                return JSONResponse({"error": "unavailable"}, status_code=self.status)
            self.callbacks.append(json.loads(body))
            return JSONResponse({"message": "processing"})

        return Starlette(
            routes=[Route("/foreman_tasks/api/tasks/callback", callback, methods=["POST"])]
        )

    async def start(self) -> None:
        self.served = await start_app(self.app(), self.port, self.ssl_context)

    async def stop(self) -> None:
        if self.served is not None:
            await self.served.stop()
            self.served = None


@dataclass
class CoreService:
    core: Core
    served: Served
    client: httpx.AsyncClient

    @property
    def url(self) -> str:
        return self.served.url

    @property
    def world(self) -> Any:
        return self.core.world


def make_config(
    db_url: str, foreman_url: str = "http://127.0.0.1:9", **overrides: Any
) -> CoreConfig:
    values: dict[str, Any] = {
        "db_url": db_url,
        "foreman_url": foreman_url,
        "runner_refresh_interval": 0.05,
        "callback_retry_interval": 0.05,
        "callback_retry_max_interval": 0.2,
        "world_options": {"termination_timeout": 5},
        **overrides,
    }
    return CoreConfig(**values)


@contextlib.asynccontextmanager
async def core_service(
    config: CoreConfig,
    *,
    register: Callable[[Core], None] | None = register_test_actions,
    authorize: Any = None,
    ssl_context: ssl.SSLContext | None = None,
    client_kwargs: dict[str, Any] | None = None,
    max_body_size: int | None = None,
    console: Any = None,
) -> AsyncIterator[CoreService]:
    core = Core(config)
    if register is not None:
        register(core)
    options: dict[str, Any] = {"authorize": authorize, "console": console}
    if max_body_size is not None:
        options["max_body_size"] = max_body_size
    app = RequestLogMiddleware(create_app(core, **options))
    await core.start()
    try:
        served = await start_app(app, ssl_context=ssl_context)
        try:
            async with httpx.AsyncClient(
                base_url=served.url, timeout=30, **(client_kwargs or {})
            ) as client:
                yield CoreService(core, served, client)
        finally:
            await served.stop()
    finally:
        await core.stop()


def run_script(action_input: dict[str, Any]) -> dict[str, Any]:
    """The body of ``POST /tasks/launch`` running the test's RunScript with ``action_input``."""
    from .local_command import RUN_SCRIPT_NAMES

    return {
        "operation": "single",
        "input": {"action_class": RUN_SCRIPT_NAMES[0], "action_input": action_input},
    }
