"""The task API Foreman talks to (``/tasks...``, §1), as a Starlette application.

Mounted at ``/`` by the standalone core service and at ``/dynflow`` by the Smart Proxy. The
application talks only to the :class:`~smart_proxy_dynflow.core.Core`; who may call it is
decided by the ``authorize`` callable the host passes in (the standalone service checks the
proxy's certificate serial, the Smart Proxy its trusted hosts and client certificates), except
for ``/tasks/:id/update`` and ``/done``, which accept a task's one-time password instead.

Every error is JSON ``{"error": ...}`` with a 4xx status; nothing a client sends can cause a
500 or change a stored plan it did not name. Bodies are read by :mod:`smart_proxy.json_body`
(JSON content types only, 415 otherwise; at most ``MAX_JSON_DEPTH`` levels; no lone
surrogates), and browsers' cross-site requests (``Sec-Fetch-Site``, a foreign ``Origin``) get
403 before anything else. A request that needs the database while it cannot be used (PostgreSQL
down, the SQLite disk full) gets 503 naming the cause (``Retry-After``); the engine logs the
outage once (``World.report_store_failure``) and requests succeed again as soon as it is back.
Stored values that cannot be encoded (lone surrogates written by older versions) are shown with
U+FFFD.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dynflow import telemetry
from dynflow.errors import (
    EventRejected,
    ExecutionRejected,
    PlanningError,
    PlanNotFound,
    PlanUnreadable,
)
from dynflow.persistence.health import impatient
from dynflow.states import PLAN_STATES
from smart_proxy.json_body import JsonBodyError, cross_site_denial, dumps_safe, read_json
from smart_proxy.redact import redact
from smart_proxy.server import is_https

from .console import Console, ConsoleAccess
from .core import Core
from .launcher import DuplicateTask, Launcher, LaunchInputError
from .openapi import openapi_document
from .registry import UnknownAction, UnknownOperation
from .runner_action import FINISHED_STATES, RunnerAction, external_event

log = logging.getLogger("smart_proxy_dynflow.api")

Authorize = Callable[[Request], Awaitable[Response | None]]

DEFAULT_MAX_BODY = 256 * 1024 * 1024
"""The largest request body (``max_body_size``): Foreman launches 100 hosts in one request, each
with its own copy of the script, so a 2 MB script makes a 200 MB launch."""
STATUSES_ERROR = "'task_ids' needs to be provided and be a non-empty array of task UUIDs"
STEP_ID_TEXT = re.compile(r"[ \t\n\r]*[0-9]{1,20}[ \t\n\r]*")
"""A ``step_id`` given as text, as the OpenAPI document says: at most 20 ASCII digits
(``str.isdigit`` also takes ``"²"``, and ``int`` refuses that and more than 4300 digits)."""


@dataclass
class _Cached:
    version: int
    expires: float
    body: bytes
    runner_ids: list[str]


class StatusCache:
    """Rendered task statuses, valid while the plan's version is unchanged (an LRU).

    Every change this process stores bumps the plan's version (``world.plan_version``), so an
    entry is served only while nothing was written since it was rendered: Foreman polling the
    status of a job that has not moved, or of a finished one, costs no database reads. ``ttl``
    bounds how long a change made by another process (or a deletion by the cleaner) can go
    unnoticed.
    """

    def __init__(self, max_entries: int = 10_000, ttl: float = 60.0) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self._entries: OrderedDict[str, _Cached] = OrderedDict()

    def get(self, plan_id: str, version: int) -> _Cached | None:
        entry = self._entries.get(plan_id)
        if entry is None:
            return None
        if entry.version != version or entry.expires < time.monotonic():
            del self._entries[plan_id]
            return None
        self._entries.move_to_end(plan_id)
        return entry

    def put(self, plan_id: str, version: int, body: bytes, runner_ids: list[str]) -> _Cached:
        entry = _Cached(version, time.monotonic() + self.ttl, body, runner_ids)
        self._entries[plan_id] = entry
        self._entries.move_to_end(plan_id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return entry


def render(data: Any) -> bytes:
    return dumps_safe(data)


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class StoreUnavailable(Exception):
    """The request needs to store something while the database cannot be used (503)."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


STORE_RETRY_AFTER = 5
"""Seconds a client is asked to wait (``Retry-After``) when the database cannot be used."""


def store_unavailable(cause: str) -> JSONResponse:
    """503: the request needs the database, which cannot be used now (``cause``: one line)."""
    return JSONResponse(
        {"error": f"the database cannot be used now ({cause}); try again later"},
        status_code=503,
        headers={"Retry-After": str(STORE_RETRY_AFTER)},
    )


async def allow_all(request: Request) -> Response | None:
    return None


class TaskApi:
    def __init__(
        self,
        core: Core,
        *,
        authorize: Authorize | None = None,
        max_body_size: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.core = core
        self.authorize = authorize or allow_all
        self.max_body_size = max_body_size
        self.status_cache = StatusCache()

    # ---- request plumbing -----------------------------------------------------------------------
    async def body(self, request: Request, *, required: bool = True) -> dict[str, Any]:
        """The JSON object in the body ({} for an empty body that is not ``required``)."""
        data = await read_json(request, self.max_body_size, required=required)
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ApiError(400, f"request body must be a JSON object, not {_json_type(data)}")
        return data

    def require_store(self) -> None:
        """Refuse (503) a request whose effect the engine stores later (an event for a running
        step: cancel, halt, update, done) while the database cannot be written; it would be
        accepted and then lost. The failure clears at the next commit (the world's heartbeat
        writes every 15 s, launches try)."""
        failure = self.core.world.store_failure()
        if failure is not None:
            raise StoreUnavailable(failure.cause)

    def callback_host(self, request: Request, input: Any) -> str:
        """``action_input.proxy_url`` if Foreman sent it, else this request's scheme and host."""
        url = Launcher.proxy_url(input)
        if url:
            return url
        scheme = "https" if is_https(request.scope) else "http"
        host = request.headers.get("x-forwarded-for", "").split(",")[0].strip()
        if not host:
            host = request.headers.get("host", "")
        return f"{scheme}://{host}"

    async def guarded(
        self,
        request: Request,
        handler: Callable[[Request], Awaitable[Response]],
        token: bool = False,
    ) -> Response:
        cross_site = cross_site_denial(request)
        if cross_site is not None:
            log.warning("refused %s %s: %s", request.method, request.url.path, cross_site)
            return error(403, cross_site)
        denied = await (self.authorize_token(request) if token else self.authorize(request))
        if denied is not None:
            return denied
        try:
            with impatient():  # a request is answered 503, it does not wait out an outage
                return await handler(request)
        except JsonBodyError as exc:
            log.warning("refused the body of %s %s: %s", request.method, request.url.path, exc)
            return error(exc.status, exc.message)
        except ApiError as exc:
            return error(exc.status, exc.message)
        except StoreUnavailable as exc:
            return store_unavailable(exc.cause)
        except UnknownOperation as exc:
            return error(404, str(exc))
        except UnknownAction as exc:
            return error(400, str(exc))
        except LaunchInputError as exc:
            return error(422, str(exc))
        except DuplicateTask as exc:
            return error(409, str(exc))
        except ExecutionRejected as exc:
            return error(503, f"the service cannot take tasks now: {exc}")
        except PlanUnreadable as exc:
            return error(409, str(exc))
        except ClientDisconnect:
            raise  # the request log says so; nobody is left to answer
        except Exception as exc:
            cause = self.core.world.report_store_failure(exc)
            if cause is None:
                raise
            return store_unavailable(cause)

    async def authorize_token(self, request: Request) -> Response | None:
        """``update``/``done``: a valid one-time password of this task, else the normal checks."""
        header = request.headers.get("authorization")
        if header is None:
            return await self.authorize(request)
        scheme, _, token = header.partition(" ")
        task_id = request.path_params["task_id"]
        clear = request.url.path.rstrip("/").endswith("/done")
        if scheme.lower() != "basic" or not self.core.otp.authenticate(
            token, expected_user=task_id, clear=clear
        ):
            log.error("invalid one-time password for task %s", task_id)
            return error(403, "Invalid username or password supplied")
        return None

    # ---- endpoints ------------------------------------------------------------------------------
    async def trigger(self, request: Request) -> Response:
        """``POST /tasks``: the legacy trigger (``action_name`` + ``action_input``)."""
        body = await self.body(request)
        name = body.get("action_name")
        if not isinstance(name, str):
            raise ApiError(422, "'action_name' must be a string naming an action")
        action_input = body.get("action_input", {})
        if not isinstance(action_input, dict):
            raise ApiError(422, "'action_input' must be an object")
        action_class = self.core.actions.lookup(name)
        host = self.callback_host(request, {"action_input": action_input})
        result = await self.core.world.trigger(
            action_class, {**action_input, "callback_host": host}
        )
        return JSONResponse({"task_id": result.id})

    async def launch(self, request: Request) -> Response:
        """``POST /tasks/launch``: ``{"operation", "input", "options"}`` → launcher results."""
        body = await self.body(request)
        operation = body.get("operation")
        if not isinstance(operation, str):
            raise ApiError(422, "'operation' must be a string naming a registered operation")
        if "input" not in body:
            raise ApiError(422, "'input' is missing")
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise ApiError(422, "'options' must be an object")
        launcher_class = self.core.launchers.fetch(operation)
        launcher = launcher_class(
            self.core, self.callback_host(request, body["input"]), options, operation=operation
        )
        try:
            results = await launcher.launch(body["input"])
        except PlanningError as exc:
            raise ApiError(422, str(exc)) from None
        return JSONResponse(results)

    async def task_status(self, request: Request) -> Response:
        """``GET /tasks/:id/status``: the plan hash plus its actions; 404 ``{}`` if unknown."""
        body = await self.status_body(request.path_params["task_id"])
        if body is None:
            return JSONResponse({}, status_code=404)
        return Response(body, media_type="application/json")

    async def bulk_status(self, request: Request) -> Response:
        """``POST /tasks/status``: state and result of each known id (unknown ones absent)."""
        ids = self.task_ids(await self.body(request, required=False), required=False)
        if not ids:
            return JSONResponse({})
        return JSONResponse(await self.core.world.plan_statuses({"uuid": ids}))

    async def statuses(self, request: Request) -> Response:
        """``POST /tasks/statuses``: the full status of each known id."""
        ids = self.task_ids(await self.body(request, required=False), required=True)
        known = await self.core.world.plan_statuses({"uuid": ids})
        parts: list[bytes] = []
        for task_id in dict.fromkeys(ids):
            if task_id in known:
                body = await self.status_body(task_id)
                if body is not None:
                    parts.append(render(task_id) + b":" + body)
        return Response(b"{" + b",".join(parts) + b"}", media_type="application/json")

    async def count(self, request: Request) -> Response:
        """``GET /tasks/count?state=``: plans in a state (all of them without ``state``)."""
        state = request.query_params.get("state") or "all"
        if state != "all" and state not in PLAN_STATES:
            raise ApiError(
                400, f"unknown state {state!r}; use one of: all, {', '.join(PLAN_STATES)}"
            )
        filters = None if state == "all" else {"state": state}
        return JSONResponse({"count": await self.core.world.count_plans(filters), "state": state})

    async def cancel(self, request: Request) -> Response:
        """``POST /tasks/:id/cancel``: send Cancel to every cancellable step."""
        task_id = request.path_params["task_id"]
        await self.body(request, required=False)
        if not await self.core.world.plan_statuses({"uuid": [task_id]}):
            raise ApiError(404, f"task {task_id} not found")
        self.require_store()
        count = await self.core.world.cancel(task_id)
        return JSONResponse({"task_id": task_id, "canceled_steps_count": count})

    async def halt(self, request: Request) -> Response:
        """``POST /tasks/:id/halt``: stop the plan for good (Dynflow's halt, §1.9)."""
        task_id = request.path_params["task_id"]
        await self.body(request, required=False)
        self.require_store()
        try:
            state = await self.core.world.halt(task_id)
        except PlanNotFound:
            raise ApiError(404, f"task {task_id} not found") from None
        return JSONResponse({"task_id": task_id, "state": state})

    async def metrics(self, request: Request) -> Response:
        """``GET /metrics``: the engine's metrics in the Prometheus text format."""
        body, content_type = telemetry.exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    async def event(self, request: Request) -> Response:
        """``POST /tasks/:id/update`` and ``/done``: an external event for ``step_id``."""
        task_id = request.path_params["task_id"]
        body = await self.body(request)
        step_id = body.get("step_id")
        if isinstance(step_id, str) and STEP_ID_TEXT.fullmatch(step_id):
            step_id = int(step_id)
        if not isinstance(step_id, int) or isinstance(step_id, bool):
            raise ApiError(422, "'step_id' must be the integer id of a step")
        plan = await self.core.world.load_plan(task_id)
        if plan is None:
            raise ApiError(404, f"task {task_id} not found")
        if step_id not in plan.steps:
            raise ApiError(404, f"task {task_id} has no step {step_id}")
        self.require_store()
        try:
            await self.core.world.event(task_id, step_id, external_event(body))
        except EventRejected:
            raise ApiError(
                409, f"step {step_id} of task {task_id} is not waiting for events"
            ) from None
        return Response(status_code=200)

    async def operations(self, request: Request) -> Response:
        """``GET /tasks/operations``: the registered operation names, in order."""
        return JSONResponse(self.core.operations())

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document())

    # ---- presentation ---------------------------------------------------------------------------
    def task_ids(self, body: dict[str, Any], *, required: bool) -> list[str]:
        """The strings in ``task_ids``. Other items are ignored: Foreman's safety-net poll
        sends ``null`` for every task without a parent, and takes any error as "all of this
        proxy's tasks are gone"."""
        ids = body.get("task_ids")
        if ids is None or ids == []:
            if required:
                raise ApiError(422, STATUSES_ERROR)
            return []
        if not isinstance(ids, list):
            raise ApiError(422, "'task_ids' must be an array of task UUID strings")
        return [i for i in ids if isinstance(i, str)]

    async def status_body(self, task_id: str) -> bytes | None:
        """The rendered status of a task (None if unknown), cached while the plan is unchanged.

        Like the original, asking for the status asks the task's running runners for fresh
        output (§4.6); it arrives as a change of the plan, so the next request shows it.
        """
        world = self.core.world
        version = world.plan_version(task_id)
        cached = self.status_cache.get(task_id, version)
        if cached is None:
            plan = await world.load_plan(task_id)
            if plan is None:
                return None
            data, runner_ids = await self.present(plan)
            cached = self.status_cache.put(task_id, version, render(data), runner_ids)
        for runner_id in cached.runner_ids:
            self.core.dispatcher.refresh_output(runner_id)
        return cached.body

    async def present(self, plan: Any) -> tuple[dict[str, Any], list[str]]:
        """The plan hash plus ``actions``, with live runner output and secrets redacted (§1.5).

        Also returns the ids of the runners still running for it.
        """
        data = plan.to_hash()  # with "progress" (0..1), which the original's hash lacks
        actions = []
        runner_ids: list[str] = []
        world = self.core.world
        for action in sorted(plan.actions.values(), key=lambda a: a.id):
            entry = action.to_hash()
            output = entry.get("output") or {}
            if isinstance(action, RunnerAction):
                run_step = plan.steps.get(action.run_step_id)
                state = run_step.state if run_step is not None else None
                if state not in FINISHED_STATES and type(action).has_live_output(output):
                    chunks = await world.output_chunks(plan.id, action.id)
                    output = RunnerAction.live_output(output, chunks)
                    if state in ("running", "suspended") and output.get("runner_id"):
                        runner_ids.append(output["runner_id"])
                if not isinstance(output.get("result"), list):
                    # Before its run step started the output is {}; Foreman (REX) iterates
                    # output.result at every read and shows "Error loading data from proxy".
                    output = {**output, "result": []}
            entry["output"] = output
            entry["input"] = redact(entry.get("input") or {})
            actions.append(world.present_action(plan, action.id, entry))
        data["actions"] = actions
        return data, runner_ids

    # ---- the application ------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        def wrap(handler: Callable[[Request], Awaitable[Response]], token: bool = False) -> Any:
            async def endpoint(request: Request) -> Response:
                return await self.guarded(request, handler, token=token)

            endpoint.__name__ = handler.__name__
            endpoint.__doc__ = handler.__doc__
            return endpoint

        return [
            Route("/tasks", wrap(self.trigger), methods=["POST"]),
            Route("/tasks/", wrap(self.trigger), methods=["POST"]),
            Route("/tasks/launch", wrap(self.launch), methods=["POST"]),
            Route("/tasks/launch/", wrap(self.launch), methods=["POST"]),
            Route("/tasks/status", wrap(self.bulk_status), methods=["POST"]),
            Route("/tasks/statuses", wrap(self.statuses), methods=["POST"]),
            Route("/tasks/count", wrap(self.count), methods=["GET"]),
            Route("/tasks/operations", wrap(self.operations), methods=["GET"]),
            Route("/tasks/{task_id}/status", wrap(self.task_status), methods=["GET"]),
            Route("/tasks/{task_id}/cancel", wrap(self.cancel), methods=["POST"]),
            Route("/tasks/{task_id}/halt", wrap(self.halt), methods=["POST"]),
            Route("/metrics", wrap(self.metrics), methods=["GET"]),
            Route("/tasks/{task_id}/update", wrap(self.event, token=True), methods=["POST"]),
            Route("/tasks/{task_id}/done", wrap(self.event, token=True), methods=["POST"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
        ]


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error(404, f"no such endpoint: {request.method} {request.url.path}")
    if exc.status_code == 405:  # with the route's Allow header (RFC 9110 §15.5.6)
        return JSONResponse(
            {"error": f"method {request.method} not allowed on {request.url.path}"},
            status_code=405,
            headers=exc.headers,
        )
    return error(exc.status_code, str(exc.detail))


def create_app(
    core: Core,
    *,
    authorize: Authorize | None = None,
    max_body_size: int = DEFAULT_MAX_BODY,
    console: ConsoleAccess | None = None,
) -> Starlette:
    """The task API, with the console at ``/console`` (``console``: who may open it; the
    default needs a client certificate over HTTPS and refuses plain HTTP)."""
    api = TaskApi(core, authorize=authorize, max_body_size=max_body_size)
    pages = Console(
        core.world, access=console or ConsoleAccess(), refresh_output=core.dispatcher.refresh_output
    )
    app = Starlette(
        routes=[*api.routes(), *pages.routes()],
        exception_handlers={HTTPException: _http_exception},
    )
    app.state.task_api = api
    app.state.console = pages
    return app
