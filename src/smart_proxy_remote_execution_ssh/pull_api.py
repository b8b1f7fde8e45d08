"""The endpoints hosts use in pull mode, under the plugin's ``/ssh`` (§8), and their payloads.

=============================  =================================================================
``GET /ssh/jobs``              the uuids of the caller's jobs, oldest first (JSON array)
``GET /ssh/jobs/:uuid``        the script (text); ``X-Foreman-Effective-User`` when set; the job
                               counts as fetched (``JobDelivered``, MQTT ``running``)
``GET /ssh/jobs/:uuid/cancel`` 200 while the job exists (the host acknowledges a cancel message)
``POST /ssh/jobs/:uuid/update`` output and the exit code (§7.4, legacy or ``"version": "1"``)
=============================  =================================================================

**Who may call** (§7.2): only HTTPS with a client certificate signed by the proxy's CA; its CN
is the host's identity and must own the job. No certificate: 403; plain HTTP: 403 (the
original skipped the check and then failed anyway); an unknown job or one of another host: 404.
Trusted hosts do not apply (hosts are not Foreman). Errors are JSON ``{"error": ...}``; a bad
update payload is a 400 and leaves the job running (the original ended it with ``EXCEPTION``).
Update bodies are read by :mod:`smart_proxy.json_body` (JSON content types only, 415 otherwise;
at most ``MAX_JSON_DEPTH`` levels, no lone surrogates); a browser's cross-site request is 403;
an update the database cannot take now is 503.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from dynflow.errors import DynflowError, EventRejected
from dynflow.persistence.health import StoreUnavailable
from smart_proxy.authorization import deny, https_cert_cn
from smart_proxy.json_body import JsonBodyError, cross_site_denial, read_json
from smart_proxy.server import client_certificate, is_https
from smart_proxy_dynflow.api import store_unavailable
from smart_proxy_dynflow.runner import Update

from .jobs import PullJob
from .pull import JOB_DELIVERED
from .state import RexState

log = logging.getLogger("smart_proxy_remote_execution_ssh.pull")

MAX_UPDATE_BODY = 16 * 1024 * 1024
OUTPUT_TYPES = ("stdout", "stderr", "debug")
PLAIN_HTTP_MESSAGE = (
    "Pull-mode job endpoints need HTTPS with the host's client certificate (its CN names "
    "the host); plain HTTP is refused"
)

StateLocator = Callable[[], RexState | Response]
"""Returns the core's :class:`~.state.RexState`, or a :class:`Response` saying why there is
none."""


class PayloadError(ValueError):
    """An update body that is not one of the §7.4 shapes (HTTP 400)."""


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


# ---- update payloads (§7.4) ----------------------------------------------------------------------


def _timestamp(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise PayloadError(f"{where}: 'timestamp' must be an ISO 8601 time, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise PayloadError(f"{where}: 'timestamp' is not an ISO 8601 time: {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


_EXIT_CODE_TEXT = re.compile(r"[ \t\n\r]*-?[0-9]{1,20}[ \t\n\r]*")


def _exit_code(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise PayloadError(f"{where}: 'exit_code' must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _EXIT_CODE_TEXT.fullmatch(value):
        return int(value)  # ASCII digits only: str.isdigit() also takes "²", which int() refuses
    raise PayloadError(f"{where}: 'exit_code' must be an integer, got {value!r}")


def _legacy(data: dict[str, Any]) -> Update:
    """``{"output": text | [text, ...], "type": "stdout"|"stderr", "exit_code": n}``."""
    output = data.get("output")
    if output is None:
        texts: list[Any] = []
    elif isinstance(output, str):
        texts = [output]
    elif isinstance(output, list):
        texts = output
    else:
        raise PayloadError("'output' must be a string or an array of strings")
    if not all(isinstance(text, str) for text in texts):
        raise PayloadError("'output' must be a string or an array of strings")
    kind = data.get("type")
    if kind is None:
        kind = "debug"  # the original recorded a null type (§7.4 QUIRK)
    if kind not in OUTPUT_TYPES:
        raise PayloadError(f"'type' must be one of {', '.join(OUTPUT_TYPES)}, got {kind!r}")
    now = datetime.now(UTC).timestamp()
    records = [{"output_type": kind, "output": text, "timestamp": now} for text in texts]
    if data.get("exit_code") is None:
        return Update(records)
    return Update(records, exit_status=_exit_code(data["exit_code"], "update"))


def _version_1(data: dict[str, Any]) -> Update:
    """``{"version": "1", "updates": [{"type": "output"|"exit", ..., "timestamp"}, ...]}``."""
    updates = data.get("updates")
    if not isinstance(updates, list):
        raise PayloadError("'updates' must be an array")
    records: list[dict[str, Any]] = []
    exit_status: int | None = None
    exit_timestamp: float | None = None
    for index, item in enumerate(updates):
        where = f"updates[{index}]"
        if not isinstance(item, dict):
            raise PayloadError(f"{where} must be an object")
        timestamp = _timestamp(item.get("timestamp"), where)
        kind = item.get("type")
        if kind == "output":
            stream = item.get("stream")
            if stream not in ("stdout", "stderr"):
                raise PayloadError(f"{where}: 'stream' must be stdout or stderr, got {stream!r}")
            content = item.get("content")
            if not isinstance(content, str):
                raise PayloadError(f"{where}: 'content' must be a string")
            records.append({"output_type": stream, "output": content, "timestamp": timestamp})
        elif kind == "exit":
            exit_status = _exit_code(item.get("exit_code"), where)  # the last one wins
            exit_timestamp = timestamp
        else:
            raise PayloadError(f"{where}: unknown update type {kind!r} (output or exit)")
    return Update(records, exit_status=exit_status, exit_status_timestamp=exit_timestamp)


def parse_update(data: Any) -> Update:
    """The :class:`Update` a host's report makes; raises :class:`PayloadError`."""
    if not isinstance(data, dict):
        raise PayloadError("the body must be a JSON object")
    version = data.get("version")
    if version is None:
        return _legacy(data)
    if str(version) == "1" and not isinstance(version, bool):
        return _version_1(data)
    raise PayloadError(f'unsupported update version {version!r} ("1", or none for legacy)')


async def _json_body(request: Request) -> Any:
    return await read_json(request, MAX_UPDATE_BODY, what="body")


# ---- the endpoints -------------------------------------------------------------------------------


def host_of(request: Request) -> str | Response:
    """The caller's identity (its certificate's CN, lower-cased), or the 403 answer."""
    if not is_https(request.scope):
        return deny(request, PLAIN_HTTP_MESSAGE)
    if client_certificate(request.scope) is None:
        return deny(request, "No client SSL certificate supplied")
    cn = https_cert_cn(request)
    if not cn:
        return deny(request, "Client SSL certificate has no CN")
    return cn


class PullApi:
    def __init__(self, locate: StateLocator) -> None:
        self.locate = locate

    async def _context(self, request: Request) -> tuple[str, RexState] | Response:
        cross_site = cross_site_denial(request)
        if cross_site is not None:
            log.warning("refused %s %s: %s", request.method, request.url.path, cross_site)
            return error(403, cross_site)
        host = host_of(request)
        if isinstance(host, Response):
            return host
        state = self.locate()
        if isinstance(state, Response):
            return state
        return host, state

    async def _job(self, request: Request) -> tuple[RexState, PullJob] | Response:
        context = await self._context(request)
        if isinstance(context, Response):
            return context
        host, state = context
        uuid = request.path_params["job_uuid"]
        job = state.jobs.find(uuid, host)
        if job is None:
            log.info("host %s asked for job %s, which it does not own", host, uuid)
            return error(404, f"Job {uuid} not found")
        return state, job

    async def list_jobs(self, request: Request) -> Response:
        context = await self._context(request)
        if isinstance(context, Response):
            return context
        host, state = context
        return JSONResponse(state.jobs.uuids_of(host))

    async def fetch(self, request: Request) -> Response:
        found = await self._job(request)
        if isinstance(found, Response):
            return found
        state, job = found
        if state.mqtt is not None:
            state.mqtt.running(job.uuid)
        try:
            await state.world.event(
                job.execution_plan_id, job.run_step_id, JOB_DELIVERED, optional=True
            )
        except StoreUnavailable as exc:
            return store_unavailable(exc.cause)  # fetched again once the delivery can be stored
        except DynflowError as exc:
            log.warning("job %s: cannot record its delivery: %s", job.uuid, exc)
        except Exception as exc:
            cause = state.world.report_store_failure(exc)
            if cause is None:
                raise
            return store_unavailable(cause)  # fetched again once the delivery can be stored
        headers = {"X-Foreman-Effective-User": job.effective_user} if job.effective_user else {}
        return PlainTextResponse(job.script, headers=headers)

    async def cancel(self, request: Request) -> Response:
        found = await self._job(request)
        if isinstance(found, Response):
            return found
        return Response(status_code=200)

    async def update(self, request: Request) -> Response:
        found = await self._job(request)
        if isinstance(found, Response):
            return found
        state, job = found
        try:
            update = parse_update(await _json_body(request))
        except JsonBodyError as exc:
            log.warning("job %s: bad update: %s", job.uuid, exc)
            return error(exc.status, exc.message)
        except PayloadError as exc:
            log.warning("job %s: bad update: %s", job.uuid, exc)
            return error(400, str(exc))
        try:
            await state.world.event(job.execution_plan_id, job.run_step_id, update.to_event())
        except EventRejected:
            return error(404, f"Job {job.uuid} is not running any more")
        except Exception as exc:
            cause = state.world.report_store_failure(exc)
            if cause is None:
                raise
            return store_unavailable(cause)
        return Response(status_code=200)

    def routes(self) -> list[Route]:
        return [
            Route("/jobs", self.list_jobs, methods=["GET"]),
            Route("/jobs/{job_uuid}", self.fetch, methods=["GET"]),
            Route("/jobs/{job_uuid}/cancel", self.cancel, methods=["GET"]),
            Route("/jobs/{job_uuid}/update", self.update, methods=["POST"]),
        ]
