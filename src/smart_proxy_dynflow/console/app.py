"""The Dynflow console (spec §6): server-rendered HTML pages over the world's public API.

Served at ``/console`` by the standalone core and at ``/dynflow/console`` by the Smart Proxy
(in-process, or relayed to the core). Pages:

* ``GET /console``: the plans, with counts per state, filters (state, result, label), a search
  over label and id, ordering and pagination; ``/console/:id/actions/:action/sub_plans`` the
  same for the sub-plans of one action;
* ``GET /console/:id``: one plan: header (state, result, times, parent, sub-plans, failed
  steps), tabs Run and Finalize (flow diagrams: sequences top to bottom, concurrent branches
  side by side), Plan (the tree of plan steps), Sub-plans, History; every step with its state,
  progress, timings, input, output, output chunks and error with backtrace;
  ``GET /console/:id/live`` the changes since a version, which the page's script polls while
  the plan runs (output appended, steps updated in place);
* ``POST /console/:id/resume``, ``/cancel``, ``/halt``, ``/skip/:step``, ``/cancel/:step``: actions,
  answered with a redirect back to the plan and a notice;
* ``GET /console/worlds``: the executor worlds, this world's queues; ``POST
  /console/worlds/check`` (``?invalidate=true``) and ``/console/worlds/:id/check``.

Reading works without JavaScript; ``static/console.js`` adds live updates, confirmation
dialogs and tab switching without reloads. Every bad input is a 4xx page. Access is decided by
:class:`~.security.ConsoleAccess`, forms are guarded by :class:`~.security.FormGuard`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from dynflow.action import CANCEL
from dynflow.errors import DynflowError, EventRejected, PlanNotFound, PlanUnreadable
from dynflow.states import PLAN_STATES, RESULTS
from smart_proxy.server import is_https

from . import views
from .security import CSRF_COOKIE, CSRF_FIELD, ConsoleAccess, FormGuard
from .views import BadRequest, ListQuery

log = logging.getLogger("smart_proxy_dynflow.console")

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
TABS = ("run", "plan", "finalize", "sub-plans", "history")
SUB_PLANS_SHOWN = 20
PREFIX = re.compile(r"^(/[A-Za-z0-9._~-]+)*$")
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
EVENT_WAIT = 5.0
_GUARDS: dict[str, FormGuard] = {}
MAX_FORM = 16 * 1024

Handler = Callable[[Request, "Page"], Awaitable[Response]]


@dataclass
class Page:
    """One request's context for the templates: where the console is, its form token, notice."""

    base: str
    csrf: str
    set_cookie: bool
    secure: bool
    notice: tuple[str, str] | None = None

    def url(self, *parts: Any, **query: Any) -> str:
        path = self.base + "".join("/" + quote(str(p), safe="") for p in parts)
        pairs = [(k, v) for k, v in query.items() if v is not None]
        return path + ("?" + urlencode(pairs) if pairs else "")

    def plan_url(self, plan_id: str, **query: Any) -> str:
        return self.url(plan_id, **query)


def environment(title: str = "Dynflow console") -> Environment:
    """The templates, with the console's filters and globals."""
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        time=views.format_time,
        iso=views.iso_time,
        duration=views.format_duration,
        ago=views.ago,
        number=lambda n: f"{n:,}",
    )
    env.globals.update(
        PLAN_STATES=PLAN_STATES,
        RESULTS=RESULTS,
        TABS=TABS,
        PER_PAGE_CHOICES=views.PER_PAGE_CHOICES,
        CSRF_FIELD=CSRF_FIELD,
        title=title,
        static_version=_static_version(),
    )
    return env


def base_path(request: Request, prefix: str = "/console") -> str:
    """Where the console is, as the browser sees it: ``X-Forwarded-Prefix`` (set by the
    Smart Proxy's relay) + the mount path of the application + ``prefix``."""
    forwarded = request.headers.get("x-forwarded-prefix", "").rstrip("/")
    if len(forwarded) > 200 or not PREFIX.match(forwarded):
        forwarded = ""
    return forwarded + request.scope.get("root_path", "").rstrip("/") + prefix


def denied_page(request: Request, message: str, prefix: str = "/console") -> Response:
    """The 403 page refusing access to the console (also used by the relay)."""
    page = Page(base=base_path(request, prefix), csrf="", set_cookie=False, secure=False)
    html = (
        environment()
        .get_template("error.html")
        .render(page=page, status=403, heading="Access denied", message=message)
    )
    response = HTMLResponse(html, status_code=403)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    return response


class Console:
    """The console of one world; :meth:`routes` go into the task API's application."""

    def __init__(
        self,
        world: Any,
        *,
        access: ConsoleAccess | None = None,
        refresh_output: Callable[[str], Any] | None = None,
        prefix: str = "/console",
        title: str = "Dynflow console",
    ) -> None:
        self.world = world
        self.access = access or ConsoleAccess()
        self.refresh_output = refresh_output
        self.prefix = prefix.rstrip("/")
        self.title = title
        # One key per world: the consoles of its HTTP and HTTPS listeners accept each other's
        # tokens.
        self.guard = _GUARDS.setdefault(str(getattr(world, "id", id(world))), FormGuard())
        self.env = environment(title)
        self._macros: Any = None
        self._runners: OrderedDict[str, list[str]] = OrderedDict()
        self._pending: set[asyncio.Task[Any]] = set()

    # ---- routes ---------------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        p = self.prefix
        get, post = ["GET"], ["POST"]
        page = self.endpoint
        return [
            Route(p, page(self.plans), methods=get),
            Route(p + "/", page(self.plans), methods=get),
            Route(p + "/status", page(self.status), methods=get),
            Route(p + "/worlds", page(self.worlds), methods=get),
            Route(p + "/worlds/check", page(self.check_worlds, post=True), methods=post),
            Route(
                p + "/worlds/execution_status",
                page(self.execution_status, post=True),
                methods=post,
            ),
            Route(p + "/worlds/{world_id}/check", page(self.check_worlds, post=True), methods=post),
            Mount(p + "/static", app=StaticFiles(directory=str(STATIC)), name="console-static"),
            Route(p + "/{plan_id}", page(self.plan), methods=get),
            Route(p + "/{plan_id}/live", page(self.live), methods=get),
            Route(
                p + "/{plan_id}/actions/{action_id}/sub_plans", page(self.sub_plans), methods=get
            ),
            Route(p + "/{plan_id}/actions/{action_id}/output.txt", page(self.output), methods=get),
            Route(p + "/{plan_id}/resume", page(self.resume, post=True), methods=post),
            Route(p + "/{plan_id}/cancel", page(self.cancel, post=True), methods=post),
            Route(p + "/{plan_id}/halt", page(self.halt, post=True), methods=post),
            Route(p + "/{plan_id}/skip/{step_id}", page(self.skip_step, post=True), methods=post),
            Route(
                p + "/{plan_id}/cancel/{step_id}", page(self.cancel_step, post=True), methods=post
            ),
            Route(
                p + "/{rest:path}",
                page(self.not_found),
                methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
            ),
        ]

    # ---- plumbing -------------------------------------------------------------------------------
    def endpoint(self, handler: Handler, *, post: bool = False) -> Callable[..., Any]:
        async def run(request: Request) -> Response:
            denied = await self.access.denial(request)
            if denied is not None:
                log.warning(
                    "console access refused (%s %s): %s", request.method, request.url.path, denied
                )
                return denied_page(request, denied, self.prefix)
            page = self.page(request)
            try:
                if post:
                    form = await read_form(request)
                    refused = self.guard.check(request, form.get(CSRF_FIELD))
                    if refused is not None:
                        log.warning("console form refused (%s): %s", request.url.path, refused)
                        return self.finish(page, self.error(page, 403, "Request refused", refused))
                response = await handler(request, page)
            except BadRequest as exc:
                title = _TITLES.get(exc.status, "Error")
                response = self.error(page, exc.status, title, exc.message, exc.link)
            except PlanUnreadable as exc:
                response = self.error(page, 409, "Plan cannot be read", f"{exc}.")
            except Exception:  # an error page, never a traceback
                log.exception("console error on %s %s", request.method, request.url.path)
                response = self.error(
                    page,
                    500,
                    "Internal error",
                    "The console failed to answer this request; the service's log has the details.",
                )
            return self.finish(page, response)

        run.__name__ = handler.__name__
        return run

    def page(self, request: Request) -> Page:
        base = base_path(request, self.prefix)
        token, new = self.guard.token_for(request)
        secure = is_https(request.scope) or request.headers.get("x-forwarded-proto") == "https"
        page = Page(base=base, csrf=token, set_cookie=new, secure=secure)
        params = request.query_params
        notice, level, signature = params.get("notice"), params.get("level"), params.get("sig")
        if notice and level in ("ok", "error") and signature:
            if self.guard.valid_notice(level, notice, signature):
                page.notice = (level, notice)
        return page

    def finish(self, page: Page, response: Response) -> Response:
        if page.set_cookie:
            response.set_cookie(
                CSRF_COOKIE,
                page.csrf,
                path=page.base,
                httponly=True,
                samesite="strict",
                secure=page.secure,
            )
        headers = response.headers
        headers.setdefault("Content-Security-Policy", CSP)
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "same-origin")
        headers.setdefault("Cache-Control", "no-store")
        return response

    def render(self, page: Page, template: str, code: int = 200, **context: Any) -> Response:
        html = self.env.get_template(template).render(page=page, **context)
        return HTMLResponse(html, status_code=code)

    def error(
        self,
        page: Page,
        status: int,
        title: str,
        message: str,
        link: tuple[str, str] | None = None,
    ) -> Response:
        return self.render(
            page, "error.html", status, status=status, heading=title, message=message, link=link
        )

    def redirect(self, page: Page, plan_id: str, level: str, text: str, **query: Any) -> Response:
        url = page.plan_url(
            plan_id,
            **query,
            notice=text,
            level=level,
            sig=self.guard.sign_notice(level, text),
        )
        return RedirectResponse(url, status_code=303)

    @property
    def macros(self) -> Any:
        if self._macros is None:
            self._macros = self.env.get_template("macros.html").module
        return self._macros

    # ---- the plan list --------------------------------------------------------------------------
    async def plans(self, request: Request, page: Page) -> Response:
        query = ListQuery.parse(request.query_params)
        return await self.plan_list(page, query)

    async def sub_plans(self, request: Request, page: Page) -> Response:
        plan_id = request.path_params["plan_id"]
        action_id = _path_int(request.path_params["action_id"], "action")
        if not await self.world.plan_statuses({"uuid": [plan_id]}):
            raise BadRequest(unknown_plan(plan_id), 404)
        params = [(k, v) for k, v in request.query_params.multi_items()]
        params += [("parent", plan_id), ("parent_action", str(action_id))]
        query = ListQuery.parse(_MultiItems(params))
        return await self.plan_list(page, query)

    async def plan_list(self, page: Page, query: ListQuery) -> Response:
        world = self.world
        grouped = await world.plan_counts(query.base_filters(), ("state", "result"))
        counts = views.counts(grouped, query)
        pages = max(1, -(-counts.matching // query.per_page))
        if query.page >= pages and query.page > 0:
            raise BadRequest(
                f"There is no page {query.page + 1} (page={query.page}): the "
                f"{counts.matching:,} plans matching these filters fill {pages:,} page(s) of "
                f"{query.per_page}.",
                404,
                link=(query.qs(page=pages - 1), f"Go to the last page ({pages:,})"),
            )
        rows: list[views.PlanRow] = []
        if counts.matching:
            now = views.utcnow()
            plans = await world.find_plans(
                filters=query.filters(),
                order_by=views.ORDER_COLUMNS[query.order],
                desc=query.desc,
                page=query.page,
                per_page=query.per_page,
                narrow=True,
            )
            rows = [views.plan_row(plan, now) for plan in plans]
        labels = await world.plan_labels()
        return self.render(
            page,
            "list.html",
            query=query,
            counts=counts,
            rows=rows,
            pages=pages,
            labels=labels,
        )

    # ---- one plan -------------------------------------------------------------------------------
    async def plan_view(self, plan_id: str, *, after: int | None = None) -> views.PlanView:
        world = self.world
        plan = await world.load_plan(plan_id)  # PlanUnreadable: a 409 page
        if plan is None:
            raise BadRequest(unknown_plan(plan_id), 404)
        chunks = await world.plan_output_chunks(plan_id, after or 0)
        sub_counts = await world.sub_plan_counts(plan_id)
        sub_plans = []
        if sub_counts:
            sub_plans = await world.find_plans(
                filters={"caller_execution_plan_id": plan_id},
                order_by="started_at",
                page=0,
                per_page=SUB_PLANS_SHOWN,
            )
        worlds = {}
        if plan.execution_history:
            worlds = {w["id"]: w for w in await world.worlds()}
        view = views.build_plan_view(
            world,
            plan,
            chunks=chunks,
            sub_plan_counts=sub_counts,
            sub_plans=sub_plans,
            worlds=worlds,
            running_here=world.is_running(plan_id),
            partial_output=after is not None,
        )
        # Chaining (world.chain): the plans this one waits for and those waiting for it.
        for attribute, method in (("depends_on", "dependencies"), ("blocks", "blocks")):
            query = getattr(world, method, None)
            if query is not None:
                setattr(view, attribute, list(await query(plan_id)))
        self._remember_runners(plan_id, view.runner_ids)
        return view

    def _remember_runners(self, plan_id: str, runner_ids: list[str]) -> None:
        """Ask running runners for fresh output, as the status API does (§4.6)."""
        if runner_ids:
            self._runners[plan_id] = runner_ids
            self._runners.move_to_end(plan_id)
            while len(self._runners) > 1000:
                self._runners.popitem(last=False)
        else:
            self._runners.pop(plan_id, None)
        self._refresh(plan_id)

    def _refresh(self, plan_id: str) -> None:
        if self.refresh_output is None:
            return
        for runner_id in self._runners.get(plan_id, ()):
            try:
                self.refresh_output(runner_id)
            except Exception:  # output refresh is best effort
                log.debug("refreshing runner %s failed", runner_id, exc_info=True)

    async def plan(self, request: Request, page: Page) -> Response:
        tab = request.query_params.get("tab") or "run"
        if tab not in TABS:
            raise BadRequest(f"Unknown tab {tab!r}: use one of {', '.join(TABS)}")
        plan_id = request.path_params["plan_id"]
        version = self.world.plan_version(plan_id)
        view = await self.plan_view(plan_id)
        return self.render(page, "plan.html", plan=view, tab=tab, version=version)

    async def live(self, request: Request, page: Page) -> Response:
        """What changed since version ``v``: the header, every step, output after chunk
        ``after`` (HTML fragments, rendered by the same macros as the page)."""
        plan_id = request.path_params["plan_id"]
        params = request.query_params
        after = _query_int(params.get("after"), "after")
        version = self.world.plan_version(plan_id)
        known = params.get("v")
        if known is not None and version and known == str(version) and params.get("full") != "1":
            self._refresh(plan_id)
            return JSONResponse({"v": version, "unchanged": True})
        view = await self.plan_view(plan_id, after=after)
        macros = self.macros
        steps = {}
        for step in view.steps.values():
            steps[str(step.id)] = {
                "state": step.state,
                "head": str(macros.step_head(step, view, page)),
                "info": str(macros.step_info(step)),
            }
        output = {
            str(step.action_id): str(macros.output_lines(step.lines))
            for step in view.steps.values()
            if step.phase == "run" and step.lines
        }
        return JSONResponse(
            {
                "v": version,
                "state": view.state,
                "result": view.result,
                "live": view.live,
                "title": f"{view.state} · {view.label}",
                "header": str(macros.plan_header(view, page)),
                "failures": str(macros.failures(view, page)),
                "steps": steps,
                "output": output,
                "after": max(after, view.last_chunk_id),
            }
        )

    async def output(self, request: Request, page: Page) -> Response:
        """The whole output of an action as text (the page shows the last lines)."""
        plan_id = request.path_params["plan_id"]
        action_id = _path_int(request.path_params["action_id"], "action")
        view = await self.plan_view(plan_id)
        for step in view.steps.values():
            if step.action_id == action_id and step.phase == "run":
                chunks = [
                    c
                    for c in await self.world.plan_output_chunks(plan_id)
                    if c["action_id"] == action_id
                ]
                lines = [line for c in chunks for line in views.chunk_lines(c)] or step.lines
                text = "".join(
                    line.text if line.text.endswith("\n") else line.text + "\n" for line in lines
                )
                return PlainTextResponse(text)
        raise BadRequest(f"Plan {plan_id} has no action {action_id} with a run step.", 404)

    # ---- actions --------------------------------------------------------------------------------
    async def resume(self, request: Request, page: Page) -> Response:
        plan_id = request.path_params["plan_id"]
        try:
            await self.world.resume(plan_id)
        except PlanNotFound:
            raise BadRequest(unknown_plan(plan_id), 404) from None
        except DynflowError as exc:
            return self.redirect(page, plan_id, "error", f"Not resumed: {exc}.")
        log.info("console: plan %s resumed", plan_id)
        return self.redirect(page, plan_id, "ok", "Resumed: the plan is running again.")

    async def cancel(self, request: Request, page: Page) -> Response:
        plan_id = request.path_params["plan_id"]
        if not await self.world.plan_statuses({"uuid": [plan_id]}):
            raise BadRequest(unknown_plan(plan_id), 404)
        count = await self.world.cancel(plan_id)
        log.info("console: cancel of plan %s sent to %d steps", plan_id, count)
        if not count:
            return self.redirect(
                page,
                plan_id,
                "error",
                "Nothing to cancel: no step of this plan is running in this service and "
                "cancellable.",
            )
        steps = "1 step" if count == 1 else f"{count} steps"
        return self.redirect(page, plan_id, "ok", f"Cancel sent to {steps}.")

    async def halt(self, request: Request, page: Page) -> Response:
        plan_id = request.path_params["plan_id"]
        try:
            state = await self.world.halt(plan_id)
        except PlanNotFound:
            raise BadRequest(unknown_plan(plan_id), 404) from None
        log.info("console: plan %s halted (%s)", plan_id, state)
        if state == "stopped":
            return self.redirect(page, plan_id, "ok", "Halted: the plan is stopped for good.")
        if state == "paused":
            return self.redirect(
                page,
                plan_id,
                "ok",
                "Halted: the plan had a failed step and is paused; it will not run again.",
            )
        return self.redirect(
            page,
            plan_id,
            "ok",
            "Halt requested: another service runs this plan and stops it at its next heartbeat.",
        )

    async def skip_step(self, request: Request, page: Page) -> Response:
        plan_id = request.path_params["plan_id"]
        step_id = _path_int(request.path_params["step_id"], "step")
        try:
            await self.world.skip_step(plan_id, step_id)
        except PlanNotFound:
            raise BadRequest(unknown_plan(plan_id), 404) from None
        except DynflowError as exc:
            return self.redirect(page, plan_id, "error", f"Step {step_id} not skipped: {exc}.")
        log.info("console: step %s of plan %s marked to be skipped", step_id, plan_id)
        return self.redirect(
            page,
            plan_id,
            "ok",
            f"Step {step_id} will be skipped. Resume the plan to go on.",
        )

    async def cancel_step(self, request: Request, page: Page) -> Response:
        plan_id = request.path_params["plan_id"]
        step_id = _path_int(request.path_params["step_id"], "step")
        view = await self.plan_view(plan_id)
        step = view.steps.get(step_id)
        if step is None:
            raise BadRequest(f"Plan {plan_id} has no step {step_id}.", 404)
        if not step.cancellable:
            return self.redirect(
                page,
                plan_id,
                "error",
                f"Step {step_id} cannot be cancelled: it is {step.state}"
                + ("" if view.running_here else " and the plan is not running in this service")
                + ".",
            )
        task = asyncio.ensure_future(self.world.event(plan_id, step_id, CANCEL))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        try:
            await asyncio.wait_for(asyncio.shield(task), EVENT_WAIT)
        except EventRejected as exc:
            return self.redirect(page, plan_id, "error", f"Step {step_id} not cancelled: {exc}.")
        except TimeoutError:
            return self.redirect(
                page, plan_id, "ok", f"Cancel sent to step {step_id}; it is still reacting."
            )
        log.info("console: cancel sent to step %s of plan %s", step_id, plan_id)
        return self.redirect(page, plan_id, "ok", f"Cancel sent to step {step_id}.")

    # ---- worlds ---------------------------------------------------------------------------------
    async def status(self, request: Request, page: Page) -> Response:
        return RedirectResponse(page.url("worlds"), status_code=303)

    async def worlds(self, request: Request, page: Page) -> Response:
        worlds = sorted(
            await self.world.worlds(), key=lambda w: (not w["current"], not w["alive"], w["id"])
        )
        queues = self.world.execution_status()
        return self.render(page, "worlds.html", worlds=worlds, queues=queues)

    async def check_worlds(self, request: Request, page: Page) -> Response:
        world_id = request.path_params.get("world_id")
        invalidate = request.query_params.get("invalidate", "").lower() in ("1", "true", "yes")
        worlds = await self.world.worlds()
        if world_id is not None:
            found = [w for w in worlds if w["id"] == world_id]
            if not found:
                raise BadRequest(f"No world with id {world_id!r} is registered.", 404)
            if found[0]["alive"]:
                return self._worlds_redirect(page, "ok", f"World {world_id} is alive.")
            if invalidate:
                count = await self.world.invalidate_dead_worlds()
                log.info("console: %d dead worlds invalidated", count)
                return self._worlds_redirect(
                    page,
                    "ok",
                    f"World {world_id} was gone: invalidated ({count} world(s) in all); "
                    "their plans were recovered.",
                )
            return self._worlds_redirect(
                page, "ok", f"World {world_id} is gone (its heartbeat stopped)."
            )
        dead = [w for w in worlds if not w["alive"]]
        if invalidate:
            count = await self.world.invalidate_dead_worlds()
            log.info("console: %d dead worlds invalidated", count)
            return self._worlds_redirect(
                page, "ok", f"Invalidated {count} world(s); their plans were recovered."
            )
        text = f"{len(worlds)} world(s): {len(worlds) - len(dead)} alive, {len(dead)} gone."
        return self._worlds_redirect(page, "ok", text)

    async def execution_status(self, request: Request, page: Page) -> Response:
        """The original asked every executor for its queues; here this process's are on the
        page, other processes' cannot be asked."""
        return self._worlds_redirect(
            page,
            "ok",
            "The queues of this process are shown below; other processes' queues are not "
            "reachable from here.",
        )

    def _worlds_redirect(self, page: Page, level: str, text: str) -> Response:
        url = page.url("worlds", notice=text, level=level, sig=self.guard.sign_notice(level, text))
        return RedirectResponse(url, status_code=303)

    async def not_found(self, request: Request, page: Page) -> Response:
        if request.method not in ("GET", "HEAD"):
            raise BadRequest(
                f"{request.method} is not accepted at {request.url.path}: use the console's "
                "buttons.",
                405,
            )
        raise BadRequest(f"There is no console page at {request.url.path}.", 404)


_TITLES = {
    400: "Bad request",
    403: "Access denied",
    404: "Not found",
    405: "Not allowed",
    413: "Too large",
    500: "Cannot show this",
}


async def read_form(request: Request) -> dict[str, str]:
    """The fields of a small URL-encoded form (the console's forms hold only the token)."""
    raw = bytearray()
    async for piece in request.stream():
        raw += piece
        if len(raw) > MAX_FORM:
            raise BadRequest(f"The form is larger than {MAX_FORM} bytes.", 413)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not raw or content_type != "application/x-www-form-urlencoded":
        return {}
    try:
        fields = parse_qs(raw.decode(), max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("The form could not be read.") from None
    return {key: values[-1] for key, values in fields.items()}


def unknown_plan(plan_id: str) -> str:
    shown = plan_id if len(plan_id) <= 80 else plan_id[:80] + "…"
    return (
        f"No execution plan with id {shown!r}. It may never have existed, or the cleaner "
        "deleted it after it stopped (execution_plan_cleaner_age)."
    )


def _path_int(raw: str, what: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"There is no {what} {raw[:40]!r}: {what} ids are numbers.", 404) from None


def _query_int(raw: str | None, name: str) -> int:
    if raw is None or raw == "":
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"'{name}' must be a whole number, not {raw[:40]!r}") from None
    if value < 0:
        raise BadRequest(f"'{name}' must not be negative")
    return value


class _MultiItems:
    """A query multi-dict made of pairs (what :meth:`ListQuery.parse` reads)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    def multi_items(self) -> list[tuple[str, str]]:
        return list(self.pairs)


def _static_version() -> str:
    digest = hashlib.sha256()
    for path in sorted(STATIC.glob("*")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]
