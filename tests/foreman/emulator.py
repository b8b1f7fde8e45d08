"""A fake Foreman that talks to the Smart Proxy as the real one does (docs/foreman.md).

Written from the Foreman side's sources (foreman-tasks a036639, foreman_remote_execution
afdec5a, foreman's ``lib/proxy_api``), not from this proxy: what it sends, what it reads from
each answer, and what it concludes, rule for rule. One :class:`ForemanEmulator` per test:

* **Jobs** (:meth:`ForemanEmulator.run_job`, :meth:`~ForemanEmulator.start_job`): a REX job for
  N hosts as ``RunHostsJob`` plans it: one ``RunHostJob`` per host (its Foreman task id, its
  execution plan id = the proxy task id, the ``ProxyAction`` run step 3), the proxy selection
  (``GET /dynflow/tasks/count?state=running`` per planning batch of 100), then
  ``TriggerProxyBatch``: ``POST /dynflow/tasks/launch`` with operation ``ssh`` in batches of
  ``batch_size`` (``foreman_tasks_proxy_batch_size``, 100) and the exact input
  (:func:`proxy_input`). Without batch triggering (``batch_triggering=False``) every host is
  launched alone by its ``ProxyAction`` with the connection-error retries (``retry_count`` 4,
  ``retry_interval`` 15 s) that re-send a launch whose answer was lost.
* **Callbacks**: ``POST /foreman_tasks/api/tasks/callback``, single (``{"callback", "data"}``)
  and bulk (``{"callbacks": [...]}``), answered like ``ForemanTasks::Api::TasksController``
  (200 ``{"message": "processing"}``; 500 for a ``callbacks`` entry without a ``callback`` object
  or with a ``data`` that is not an object, after delivering the entries before it; 400 for a
  body that is not JSON; 500 when the body is not sent as JSON). Each entry is delivered to its
  host's step as Dynflow would (an event for a finished step is dropped).
* **The safety-net poll** (``WatchDelegatedProxySubTasks``): every ``poll_interval`` (600 s in
  Foreman) ``POST /dynflow/tasks/status`` with ``{"task_ids": uniq(remote ids + parent ids)}``
  (``null`` for a task without a parent), at most 1000 tasks per request; a task absent from
  the answer whose parent is absent, ``nil``, or ``stopped``/``paused`` is **missing** ("Proxy
  task gone missing from the smart proxy"); a present ``stopped``/``paused`` one is read with
  ``GET /dynflow/tasks/:id/status`` and concluded from its output; **any error of the request
  makes the answer ``{}``: every polled task is missing**.
* **Cancel / abort / halt** as foreman-tasks' ``ProxyAction``: the first cancel posts
  ``/dynflow/tasks/:id/cancel`` (empty body) and keeps waiting; a second one fails the host
  at once with "Cancel enforced: the task might be still running on the proxy"; abort posts the
  cancel and fails at once; halt tells the proxy nothing.
* **Live output** (:meth:`~ForemanEmulator.live_output`): REX's ``fill_continuous_output``:
  ``GET /dynflow/tasks/:id/status`` while the task runs, stored as events as it goes.
* **Proxy refresh** (:meth:`~ForemanEmulator.refresh_proxy`): ``GET /v2/features`` (404:
  ``GET /features``), the features whose state is ``running``, then REX's ``GET /ssh/pubkey`` and
  ``GET /ssh/ca_pubkey``; :meth:`~ForemanEmulator.proxy_version` (``GET /version``).
* **Cockpit** (:meth:`~ForemanEmulator.cockpit_session`): the request of
  ``foreman-cockpit-session`` byte for byte, and how it reads the answer (header lines).

Per host, :class:`HostOutcome` is what ``RunHostJob`` concludes: ``success`` when the
``exit`` event it stored reads ``"0"``, else ``error`` ("Job execution failed", or the
``ProxyAction``'s error), ``cancelled`` for the cancel outcomes; with the exit status, the output
as REX stored it (events de-duplicated by record ``id``, else index), and what concluded it
(``callback``, ``poll``, ``trigger``, ``planning``, ``cancel``, ``abort``, ``halt``).

Every request to the proxy is recorded (:attr:`ForemanEmulator.requests`), every callback
request too (:attr:`ForemanEmulator.callback_requests`). Requests carry Foreman's headers:
``Accept: application/json``, ``Content-Type: application/json`` (task API), ``X-Request-Id``
(the job's request id, kept by foreman-tasks' ``KeepCurrentRequestId``) and ``X-Session-Id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.services import Served, free_port, start_app

log = logging.getLogger("tests.foreman.emulator")

RUN_SCRIPT = "Proxy::RemoteExecution::Ssh::Actions::RunScript"
CALLBACK_PATH = "/foreman_tasks/api/tasks/callback"
RUN_STEP_ID = 3
"""The run step of the ``ProxyAction`` in a ``RunHostJob`` plan (plan steps 1 and 2 first)."""
POLL_INTERVAL = 600.0
"""``WatchDelegatedProxySubTasks::POLL_INTERVAL``."""
POLL_BATCH_SIZE = 1000
"""``WatchDelegatedProxySubTasks::BATCH_SIZE``."""
PROXY_BATCH_SIZE = 100
"""Setting ``foreman_tasks_proxy_batch_size``."""
PLANNING_BATCH_SIZE = 100
"""``Dynflow::Action::WithBulkSubPlans#batch_size``: hosts planned per round (one proxy
selection, hence one ``count`` request, per round)."""
PROXY_REQUEST_TIMEOUT = 60.0
"""Setting ``proxy_request_timeout`` (RestClient's read and open timeout)."""
RETRY_INTERVAL = 15.0
RETRY_COUNT = 4
"""Settings ``foreman_tasks_proxy_action_retry_interval`` / ``_retry_count``."""
DYNFLOW_WORKERS = 5
"""Events Foreman's executor handles at once (its default pool)."""
USER_AGENT = "rest-client/2.1.0 (linux x86_64) ruby/3.0.7p220"

MISSING = "Proxy task gone missing from the smart proxy"
TRIGGER_FAILED = "Failed to trigger task on the smart proxy: "
CANCEL_ENFORCED = "Cancel enforced: the task might be still running on the proxy"
ABORTED = "Task aborted: the task might be still running on the proxy"
TASK_CANCELLED = "Task cancelled"
JOB_FAILED = "Job execution failed"
PROXY_DOWN = "The only applicable proxy {name} is down"
LIVE_ERROR = "Error loading data from proxy"
CANCELLED_ERRORS = (CANCEL_ENFORCED, ABORTED, TASK_CANCELLED)

FEATURES = (
    "Dynflow",  # foreman-tasks db/seeds.d/60-dynflow_proxy_feature.rb
    "SSH",
    "Script",  # foreman_remote_execution db/seeds.d/60-ssh_proxy_feature.rb
    "Logs",
    "TFTP",
    "DNS",
    "DHCP",
    "Puppet CA",
    "Puppet",
    "BMC",
    "Realm",
    "Facts",
    "Templates",
    "HTTPBoot",
    "Registration",
)
"""Features a Foreman with foreman-tasks and REX knows (``Feature.name_map`` maps
``name.downcase.gsub(/\\s+/, "")`` to each)."""


def feature_name_map() -> dict[str, str]:
    return {"".join(name.lower().split()): name for name in FEATURES}


# ---- Ruby semantics that decide outcomes ---------------------------------------------------


def ruby_to_s(value: Any) -> str:
    """``value.to_s`` (``exit_status.to_s != '0'`` decides a host's success)."""
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def ruby_to_i(value: Any) -> int:
    """``String#to_i`` / ``Integer#to_i`` / ``nil.to_i`` (the callback's ``step_id``)."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise TypeError(f"undefined method `to_i' for {value!r}")
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        text = value.lstrip()
        sign = -1 if text.startswith("-") else 1
        text = text.lstrip("+-")
        digits = ""
        for char in text:
            if not ("0" <= char <= "9"):
                break
            digits += char
        return sign * int(digits) if digits else 0
    raise TypeError(f"undefined method `to_i' for {type(value).__name__}")


def ruby_class(value: Any) -> str:
    if value is None:
        return "nil:NilClass"
    return {
        bool: "TrueClass" if value else "FalseClass",
        str: "String",
        int: "Integer",
        float: "Float",
        list: "Array",
        dict: "Hash",
    }.get(type(value), type(value).__name__)


def is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


# ---- the proxy client (ProxyAPI::Resource + RestClient) ------------------------------------


class ProxyError(Exception):
    """What RestClient / Net::HTTP / MultiJson raise for a proxy request.

    ``kind``: ``http`` (an answer >= 300: RestClient::ExceptionWithResponse, message
    ``"<code> <reason>"``), ``refused``, ``read_timeout``, ``open_timeout``, ``network``
    (the rest of the transport errors), ``parse`` (MultiJson::ParseError)."""

    def __init__(self, message: str, *, kind: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status

    @property
    def connection_error(self) -> bool:
        """One of ``ProxyAction#with_connection_error_handling``'s: RestClient::Exception,
        ECONNREFUSED, EHOSTUNREACH, ETIMEDOUT (retried ``retry_count`` times)."""
        return self.kind != "parse"


@dataclass
class ProxyRequest:
    """One request Foreman sent to the proxy, and how it ended."""

    method: str
    url: str
    path: str
    headers: dict[str, str]
    body: Any
    sent: float
    status: int | None = None
    answer: Any = None
    answer_headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None


@dataclass
class SmartProxy:
    """A Smart Proxy as Foreman registered it: its URL (``proxy_url`` of every task) and where
    its task API is (``/dynflow`` on a proxy; the root on a standalone core)."""

    url: str
    tasks_prefix: str = "/dynflow"
    name: str = ""

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        if not self.name:
            self.name = urlsplit(self.url).hostname or self.url

    @property
    def tasks_url(self) -> str:
        return f"{self.url}{self.tasks_prefix}/tasks"


ProxyLike = SmartProxy | str


def as_proxy(proxy: ProxyLike) -> SmartProxy:
    return proxy if isinstance(proxy, SmartProxy) else SmartProxy(proxy)


# ---- the Foreman model of a job --------------------------------------------------------------


class StepError(Exception):
    """The ``ProxyAction``'s run step failed (``error!`` or a Ruby exception): the host's
    ``RunHostJob`` fails (rescue strategy Fail) with this message."""


@dataclass
class HostOutcome:
    """What ``RunHostJob`` concluded for one host."""

    hostname: str
    key: str
    """The execution plan id of the host's ``RunHostJob`` = the proxy task id."""
    task_id: str
    """The Foreman task id (the ``callback.task_id`` sent to the proxy)."""
    result: str
    """``success``, ``error``, ``cancelled`` or ``halted``."""
    exit_status: Any
    """The stored ``exit`` event (None: none)."""
    output: str
    """The stored output events (all types, by timestamp) joined."""
    stdout: str
    error: str | None
    concluded_by: str
    """``callback``, ``poll``, ``trigger``, ``planning``, ``cancel``, ``abort``,
    ``halt``."""
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.result != "success"


@dataclass
class HostTask:
    """One host of a job: its ``RunHostJob`` / ``ProxyAction`` / ``RemoteTask`` state."""

    index: int
    hostname: str
    key: str
    task_id: str
    step_id: int
    action_input: dict[str, Any]
    proxy: SmartProxy
    remote_state: str | None = None
    """``RemoteTask#state``: None (no row), ``new``, ``triggered``, ``parent-triggered``,
    ``destroyed`` (the plan stopped: ``clean_remote_task``)."""
    remote_task_id: str | None = None
    parent_task_id: str | None = None
    output: dict[str, Any] = field(default_factory=dict)
    """The ``ProxyAction``'s output: ``proxy_output``, ``cancel_sent``, ``proxy_task_id``,
    ``metadata.failed_proxy_tasks``."""
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``TemplateInvocationEvent`` rows by ``external_id`` (the first insert wins)."""
    outcome: HostOutcome | None = None
    history: list[str] = field(default_factory=list)
    """The events delivered to the step, in order."""
    dropped: list[str] = field(default_factory=list)
    """Events that came after the step had finished (Dynflow refuses them)."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def proxy_task_id(self) -> str:
        """``output[:proxy_task_id] || remote_task.remote_task_id || execution_plan_id``."""
        return self.output.get("proxy_task_id") or self.remote_task_id or self.key

    def exit_status(self) -> Any:
        event = self.events.get("exit")
        return None if event is None else event["event"]

    def sorted_events(self) -> list[dict[str, Any]]:
        return sorted(
            (e for e in self.events.values() if e["event_type"] != "exit"),
            key=lambda e: e["timestamp"],
        )

    def failed_proxy_tasks(self) -> list[dict[str, Any]]:
        return self.output.setdefault("metadata", {}).setdefault("failed_proxy_tasks", [])


@dataclass
class PollRound:
    """One round of ``WatchDelegatedProxySubTasks#check_triggered``."""

    at: float
    requests: list[list[Any]] = field(default_factory=list)
    """The ``task_ids`` of each request."""
    failed: list[str] = field(default_factory=list)
    """The warnings "Failed to check on tasks on proxy at ...": their answers became ``{}``."""
    missing: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    crashed: str | None = None
    """A Ruby exception in the processing of the answer: the middleware stops polling."""


@dataclass
class JobResult:
    """The per-host outcomes of a job, in the order of its hosts."""

    hosts: list[HostOutcome]

    def __iter__(self) -> Any:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    @property
    def succeeded(self) -> list[HostOutcome]:
        return [h for h in self.hosts if h.result == "success"]

    @property
    def failed(self) -> list[HostOutcome]:
        return [h for h in self.hosts if h.failed]

    def concluded_by(self, how: str) -> list[HostOutcome]:
        return [h for h in self.hosts if h.concluded_by == how]

    def summary(self) -> Counter[tuple[str, str]]:
        return Counter((h.result, h.concluded_by) for h in self.hosts)


@dataclass
class LiveOutput:
    """What the job's page shows for a host: the stored events, and the error line REX adds
    when loading from the proxy failed."""

    events: list[dict[str, Any]]
    error: str | None
    read_from_proxy: bool


def proxy_input(
    *,
    hostname: str,
    script: str,
    proxy_url: str,
    task_id: str,
    request_id: str,
    batch_triggering: bool = True,
    step_id: int = RUN_STEP_ID,
    **overrides: Any,
) -> dict[str, Any]:
    """The ``action_input`` of one host, key for key in Foreman's order.

    ``ScriptExecutionProvider.proxy_command_options`` (proxy_operation_name, time_to_pickup, then
    ssh_user ... ssh_port), ``RunHostJob``'s ``additional_options`` (hostname ...
    alternative_names), ``ProxyAction#plan`` (connection_options, proxy_url,
    proxy_action_name), ``KeepCurrentRequestId`` (current_request_id), and
    ``ProxyAction#proxy_input`` (callback). ``overrides`` replace values (a host's settings)."""
    values: dict[str, Any] = {
        "proxy_operation_name": "ssh",
        "time_to_pickup": 86400,
        "ssh_user": "root",
        "effective_user": "root",
        "effective_user_method": "sudo",
        "cleanup_working_dirs": True,
        "remote_working_dir": "/var/tmp",
        "ssh_port": 22,
        "hostname": hostname,
        "script": script,
        "execution_timeout_interval": None,
        "secrets": {"ssh_password": None, "key_passphrase": None, "effective_user_password": None},
        "use_batch_triggering": True,
        "first_execution": False,
        "alternative_names": {"fqdn": hostname},
        "connection_options": {
            "retry_interval": int(RETRY_INTERVAL),
            "retry_count": RETRY_COUNT,
            "proxy_batch_triggering": batch_triggering,
        },
        "proxy_url": proxy_url,
        "proxy_action_name": RUN_SCRIPT,
        "current_request_id": request_id,
    }
    unknown = set(overrides) - set(values)
    values.update(overrides)
    for key in unknown:  # provider inputs etc. go before the ones ProxyAction adds
        values[key] = values.pop(key)
    values["callback"] = {"task_id": task_id, "step_id": step_id}
    return values


@dataclass
class Job:
    """A job invocation running through one proxy (see :meth:`ForemanEmulator.start_job`)."""

    emulator: ForemanEmulator
    proxy: SmartProxy
    hosts: list[HostTask]
    request_id: str
    batch_size: int
    batch_triggering: bool
    operation: str
    action_class: str
    single_launch: bool = False
    polls: list[PollRound] = field(default_factory=list)
    polling_stopped: str | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    def host(self, key_or_hostname: str) -> HostTask:
        for host in self.hosts:
            if key_or_hostname in (host.key, host.hostname, host.task_id):
                return host
        raise KeyError(key_or_hostname)

    def spawn(self, work: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("job task failed", exc_info=task.exception())

    @property
    def done(self) -> bool:
        return all(h.outcome is not None for h in self.hosts)

    def check_finished(self) -> None:
        if self.done:
            self.finished.set()

    def result(self) -> JobResult:
        return JobResult([h.outcome for h in self.hosts if h.outcome is not None])

    def pending(self) -> list[HostTask]:
        return [h for h in self.hosts if h.outcome is None]

    async def wait(self, timeout: float) -> JobResult:
        """Until every host is concluded; an AssertionError with a summary otherwise."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.finished.wait(), timeout)
        if not self.done:
            pending = self.pending()
            sample = [(h.hostname, h.key, h.remote_state, h.history[-3:]) for h in pending[:5]]
            raise AssertionError(
                f"{len(pending)} of {len(self.hosts)} hosts not concluded after {timeout} s: "
                f"{sample}; concluded: {self.result().summary()}"
            )
        return self.result()

    async def cancel_tasks(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


# ---- the callback controller's records -------------------------------------------------------


@dataclass
class CallbackEntry:
    task_id: Any
    step_id: int
    data: Any
    delivery: str
    """``delivered`` (to a known task's step), ``unknown task``, ``no such step``."""


@dataclass
class CallbackRequest:
    received: float
    headers: dict[str, str]
    raw: bytes
    client: str | None
    status: int = 0
    answered: float = 0.0
    entries: list[CallbackEntry] = field(default_factory=list)
    error: str | None = None


@dataclass
class ProxyRecord:
    """What ``SmartProxy#refresh`` stored (plus REX's keys)."""

    url: str
    features: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Foreman feature name → ``{"capabilities": [...], "settings": {...}}``."""
    errors: list[str] = field(default_factory=list)
    pubkey: str | None = None
    ca_pubkey: str | None = None

    def has_feature(self, *names: str) -> bool:
        return any(name in self.features for name in names)

    def has_capability(self, feature: str, capability: str) -> bool:
        return capability in (self.features.get(feature, {}).get("capabilities") or [])


@dataclass
class CockpitReply:
    """What ``foreman-cockpit-session``'s ``upgrade_connection!`` made of the proxy's answer."""

    status: int
    headers: dict[str, str]
    body: str
    problem: str | None
    """None: the session is up (``Status: 101``); else the ``problem`` of the ``init``
    message it sends to Cockpit: ``access-denied`` or ``error``."""
    message: str | None
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()


# ---- the emulator ---------------------------------------------------------------------------


@dataclass
class ForemanEmulator:
    """The fake Foreman (see the module doc). ``poll_interval`` and ``retry_interval`` are
    Foreman's 600 s and 15 s, scaled down by the tests."""

    poll_interval: float = POLL_INTERVAL
    retry_interval: float = RETRY_INTERVAL
    retry_count: int = RETRY_COUNT
    request_timeout: float = PROXY_REQUEST_TIMEOUT
    port: int = field(default_factory=free_port)
    callback_status: int = 200
    """Answer every callback with this status instead of processing it (403: the proxy is
    not authorised, 500: Foreman failing)."""
    requests: list[ProxyRequest] = field(default_factory=list)
    callback_requests: list[CallbackRequest] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    lost_answers: Counter[str] = field(default_factory=Counter)
    """``{"launch": n}``: the next n answers of that endpoint (the last path segment) are lost
    after the proxy processed the request, as on a read timeout."""
    _tasks: dict[str, HostTask] = field(default_factory=dict)
    _served: Served | None = None
    _client: httpx.AsyncClient | None = None
    _workers: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(DYNFLOW_WORKERS))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> ForemanEmulator:
        self._client = httpx.AsyncClient(timeout=self.request_timeout)
        self._served = await start_app(self.app(), self.port)
        return self

    async def stop(self) -> None:
        for job in self.jobs:
            await job.cancel_tasks()
        if self._served is not None:
            await self._served.stop()
            self._served = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> ForemanEmulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- requests to the proxy (ProxyAPI::Resource) ------------------------------------------

    async def _call(
        self,
        method: str,
        url: str,
        *,
        payload: str | None = None,
        request_id: str | None = None,
        json_api: bool = True,
        parse: bool = True,
    ) -> Any:
        """One RestClient request; the parsed JSON answer (None for an empty body), or
        :class:`ProxyError`."""
        assert self._client is not None, "start() first"
        headers = {
            "Accept": "application/json",
            "Accept-Encoding": "gzip, deflate",
            "User-Agent": USER_AGENT,
            "X-Request-Id": request_id or str(uuid.uuid4()),
            "X-Session-Id": str(uuid.uuid4()),
        }
        if json_api:
            headers["Content-Type"] = "application/json"
        record = ProxyRequest(
            method,
            url,
            urlsplit(url).path,
            headers,
            _maybe_json(payload) if payload is not None else None,
            time.time(),
        )
        self.requests.append(record)
        try:
            response = await self._client.request(
                method,
                url,
                content=payload.encode() if payload is not None else None,
                headers=headers,
                follow_redirects=method == "GET",
            )
        except httpx.ConnectError as exc:
            parts = urlsplit(url)
            reason = "Connection refused" if "refused" in str(exc).lower() else str(exc)
            record.error = (
                f"Failed to open TCP connection to {parts.hostname}:{parts.port} "
                f'({reason} - connect(2) for "{parts.hostname}" port {parts.port})'
            )
            raise ProxyError(record.error, kind="refused") from exc
        except httpx.ConnectTimeout as exc:
            record.error = "Timed out connecting to server"
            raise ProxyError(record.error, kind="open_timeout") from exc
        except httpx.ReadTimeout as exc:
            record.error = "Timed out reading data from server"
            raise ProxyError(record.error, kind="read_timeout") from exc
        except httpx.TransportError as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            raise ProxyError(record.error, kind="network") from exc
        record.status = response.status_code
        record.answer_headers = dict(response.headers)
        record.answer = _maybe_json(response.text)
        endpoint = record.path.rstrip("/").rsplit("/", 1)[-1]
        if self.lost_answers[endpoint] > 0:
            self.lost_answers[endpoint] -= 1
            record.error = "Timed out reading data from server (answer dropped on purpose)"
            raise ProxyError("Timed out reading data from server", kind="read_timeout")
        if response.status_code >= 300:
            reason = _reason(response.status_code)
            record.error = f"{response.status_code} {reason}"
            raise ProxyError(record.error, kind="http", status=response.status_code)
        if not parse:
            return response.text
        if not response.text.strip():
            return None  # MultiJson.load("") is nil
        try:
            return json.loads(response.text)
        except ValueError as exc:
            record.error = f"MultiJson::ParseError: {exc}"
            raise ProxyError(record.error, kind="parse") from exc

    @staticmethod
    def _dump(value: Any) -> str:
        """``MultiJson.dump``: compact, UTF-8 as is."""
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    async def launch_tasks(
        self, proxy: ProxyLike, operation: str, input: Any, *, request_id: str | None = None
    ) -> Any:
        """``DynflowProxy#launch_tasks``: ``POST .../tasks/launch``."""
        proxy = as_proxy(proxy)
        payload = self._dump({"input": input, "operation": operation, "options": {}})
        return await self._call(
            "POST", f"{proxy.tasks_url}/launch", payload=payload, request_id=request_id
        )

    async def trigger_task(
        self, proxy: ProxyLike, action_name: str, action_input: Any, **kw: Any
    ) -> Any:
        """``DynflowProxy#trigger_task`` (legacy, no caller in current Foreman):
        ``POST .../tasks``."""
        proxy = as_proxy(proxy)
        payload = self._dump({"action_name": action_name, "action_input": action_input})
        return await self._call("POST", proxy.tasks_url, payload=payload, **kw)

    async def cancel_task(self, proxy: ProxyLike, task_id: str, **kw: Any) -> Any:
        """``DynflowProxy#cancel_task``: ``POST .../tasks/:id/cancel`` with an empty body."""
        proxy = as_proxy(proxy)
        return await self._call("POST", f"{proxy.tasks_url}/{task_id}/cancel", payload="", **kw)

    async def status_of_task(self, proxy: ProxyLike, task_id: str, **kw: Any) -> Any:
        proxy = as_proxy(proxy)
        return await self._call("GET", f"{proxy.tasks_url}/{task_id}/status", **kw)

    async def task_states(self, proxy: ProxyLike, ids: Sequence[Any], **kw: Any) -> Any:
        proxy = as_proxy(proxy)
        payload = self._dump({"task_ids": list(ids)})
        return await self._call("POST", f"{proxy.tasks_url}/status", payload=payload, **kw)

    async def tasks_count(self, proxy: ProxyLike, state: str = "running", **kw: Any) -> int:
        """``DynflowProxy#tasks_count`` (the proxy selection): ``['count'].to_i``."""
        proxy = as_proxy(proxy)
        answer = await self._call("GET", f"{proxy.tasks_url}/count?state={state}", **kw)
        return ruby_to_i(answer["count"])

    async def operations(self, proxy: ProxyLike, **kw: Any) -> Any:
        proxy = as_proxy(proxy)
        return await self._call("GET", f"{proxy.tasks_url}/operations", **kw)

    # ---- jobs --------------------------------------------------------------------------------

    async def run_job(
        self,
        proxy: ProxyLike,
        hosts: Sequence[str | Mapping[str, Any]],
        script: str = "#!/bin/sh\ntrue\n",
        *,
        timeout: float = 60.0,
        **options: Any,
    ) -> JobResult:
        """Run a job to its end (every host concluded); see :meth:`start_job`."""
        job = await self.start_job(proxy, hosts, script, **options)
        return await job.wait(timeout)

    async def start_job(
        self,
        proxy: ProxyLike,
        hosts: Sequence[str | Mapping[str, Any]],
        script: str = "#!/bin/sh\ntrue\n",
        *,
        batch_size: int = PROXY_BATCH_SIZE,
        batch_triggering: bool = True,
        single_launch: bool = False,
        operation: str = "ssh",
        action_class: str = RUN_SCRIPT,
        **input_overrides: Any,
    ) -> Job:
        """Plan a job for ``hosts`` (hostnames, or mappings with ``hostname`` and
        ``action_input`` overrides, e.g. ``ssh_port``, ``script``) and start triggering and
        polling it in the background.

        ``batch_triggering=False``: each host's ``ProxyAction`` launches itself (setting
        ``foreman_tasks_proxy_batch_trigger`` off), with the connection-error retries.
        ``single_launch=True``: each host through ``RemoteTask#trigger`` (operation
        ``single``; its task is ``triggered`` with the returned id and **no parent**, so the
        poll sends ``null`` among the ids)."""
        proxy = as_proxy(proxy)
        request_id = str(uuid.uuid4())
        tasks: list[HostTask] = []
        for index, host in enumerate(hosts):
            values = {"hostname": host} if isinstance(host, str) else dict(host)
            hostname = values.pop("hostname")
            key, task_id = str(uuid.uuid4()), str(uuid.uuid4())
            action_input = proxy_input(
                hostname=hostname,
                script=values.pop("script", script),
                proxy_url=proxy.url,
                task_id=task_id,
                request_id=request_id,
                batch_triggering=batch_triggering,
                **{**input_overrides, **values},
            )
            task = HostTask(index, hostname, key, task_id, RUN_STEP_ID, action_input, proxy)
            tasks.append(task)
            self._tasks[task_id] = task
        job = Job(
            self, proxy, tasks, request_id, batch_size, batch_triggering, operation, action_class
        )
        job.single_launch = single_launch
        self.jobs.append(job)
        job.spawn(self._plan_and_trigger(job))
        job.spawn(self._poll_loop(job))
        return job

    async def _plan_and_trigger(self, job: Job) -> None:
        """``RunHostsJob``: planning rounds of 100 hosts (one proxy selection each), the
        ``TriggerProxyBatch`` events after each round (full batches), the last batch when
        planning finished. Without batch triggering each ``ProxyAction`` triggers itself."""
        pending: list[HostTask] = []
        for start in range(0, len(job.hosts), PLANNING_BATCH_SIZE):
            planned = job.hosts[start : start + PLANNING_BATCH_SIZE]
            try:
                await self.tasks_count(job.proxy, "running", request_id=job.request_id)
            except Exception:  # the proxy is offline for this selector: planning fails
                for host in planned:
                    self._conclude(
                        job, host, "error", PROXY_DOWN.format(name=job.proxy.name), "planning"
                    )
                continue
            if job.single_launch:
                for host in planned:
                    job.spawn(self._worker(self._remote_task_trigger(job, host)))
                continue
            if not job.batch_triggering:
                for host in planned:
                    job.spawn(self._worker(self._event(job, host, "trigger", self._trigger_one)))
                continue
            for host in planned:
                host.remote_state = "new"
            pending += planned
            while len(pending) >= job.batch_size:
                batch, pending = pending[: job.batch_size], pending[job.batch_size :]
                await self._trigger_batch(job, batch)
        if pending:
            await self._trigger_batch(job, pending)

    async def _worker(self, work: Awaitable[Any]) -> Any:
        async with self._workers:
            return await work

    async def _trigger_batch(self, job: Job, batch: list[HostTask]) -> None:
        """``TriggerProxyBatch#trigger_remote_tasks_batch`` → ``RemoteTask.batch_trigger``;
        any exception fails every task of the batch (no retry)."""
        batch = [h for h in batch if h.outcome is None]
        if not batch:
            return
        input_hash = {
            h.key: {"action_input": h.action_input, "action_class": job.action_class} for h in batch
        }
        try:
            results = await self.launch_tasks(
                job.proxy, job.operation, input_hash, request_id=job.request_id
            )
            if not isinstance(results, dict):
                raise TypeError(f"undefined method `fetch' for {ruby_class(results)}")
        except Exception as exc:
            log.warning("Could not trigger task on the smart proxy: %s", exc)
            for host in batch:
                self._update_from_batch_trigger(job, host, {"exception": exc})
            return
        for host in batch:
            data = results.get(host.key, {})
            parent = results.get("parent", {})
            self._update_from_batch_trigger(
                job,
                host,
                data if isinstance(data, dict) else {},
                parent if isinstance(parent, dict) else {},
            )

    def _update_from_batch_trigger(
        self, job: Job, host: HostTask, data: dict[str, Any], parent: dict[str, Any] | None = None
    ) -> None:
        """``RemoteTask#update_from_batch_trigger``."""
        if host.outcome is not None:
            return
        host.remote_task_id = host.key
        if data.get("result") == "success":
            host.remote_task_id = data.get("task_id")
            host.remote_state = "triggered"
        elif parent:
            host.parent_task_id = parent.get("task_id")
            host.remote_state = "parent-triggered"
        else:
            exception = data.get("exception")
            handler = self._stopped_handler(exception)
            job.spawn(self._event(job, host, "trigger-stopped", handler))

    async def _remote_task_trigger(self, job: Job, host: HostTask) -> None:
        """``RemoteTask#trigger``: ``launch_tasks('single', action_class:, action_input:)``; a
        RestClient error is logged and read as ``{}`` (then the task is checked, 404:
        missing)."""
        host.remote_state = "new"
        try:
            response = await self.launch_tasks(
                job.proxy,
                "single",
                {"action_class": job.action_class, "action_input": host.action_input},
                request_id=job.request_id,
            )
        except ProxyError as exc:
            log.warning("Could not trigger task on the smart proxy: %s", exc)
            response = {}
        self._update_from_batch_trigger(job, host, response if isinstance(response, dict) else {})

    async def _trigger_one(self, job: Job, host: HostTask) -> bool:
        """``ProxyAction#trigger_proxy_task`` (no batch triggering): errors go to the
        connection-error retries."""
        host.remote_state = "new"
        results = await self.launch_tasks(
            job.proxy,
            job.operation,
            {host.key: {"action_input": host.action_input, "action_class": job.action_class}},
            request_id=job.request_id,
        )
        if not isinstance(results, dict):
            raise StepError(f"TypeError: undefined method `fetch' for {ruby_class(results)}")
        data = results.get(host.key, {})
        parent = results.get("parent", {})
        self._update_from_batch_trigger(
            job,
            host,
            data if isinstance(data, dict) else {},
            parent if isinstance(parent, dict) else {},
        )
        host.output["proxy_task_id"] = host.remote_task_id
        return False

    # ---- the step of a host: events --------------------------------------------------------

    async def _event(
        self,
        job: Job,
        host: HostTask,
        name: str,
        handler: Callable[[Job, HostTask], Awaitable[bool]],
    ) -> None:
        """Deliver one event to the host's ``ProxyAction`` run step (one at a time, as
        Dynflow does; dropped once the step finished). ``handler`` returns True when the step
        finished (then ``RunHostJob#finalize`` decides)."""
        async with host.lock:
            if host.outcome is not None:
                host.dropped.append(name)
                return
            host.history.append(name)
            by = _concluded_by(name)
            try:
                finished = await handler(job, host)
            except ProxyError as exc:
                if exc.connection_error and name != "callback":
                    self._connection_exception(job, host, name, handler, exc)
                    return
                self._conclude(job, host, "error", str(exc), by)
                return
            except StepError as exc:
                message = str(exc)
                result = "cancelled" if message in CANCELLED_ERRORS else "error"
                self._conclude(job, host, result, message, by)
                return
            if finished:
                self._finalize(job, host, by)

    def _connection_exception(
        self,
        job: Job,
        host: HostTask,
        name: str,
        handler: Callable[[Job, HostTask], Awaitable[bool]],
        exc: ProxyError,
    ) -> None:
        """``ProxyAction#handle_connection_exception``: recorded in
        ``metadata.failed_proxy_tasks``; the same event again after ``retry_interval`` while
        fewer than ``retry_count`` failures were recorded, else the step fails with it."""
        failures = host.failed_proxy_tasks()
        failures.append(
            {
                "proxy_task_id": host.proxy_task_id,
                "exception_class": exc.kind,
                "exception_message": str(exc),
                "timestamp": time.time(),
            }
        )
        host.output["proxy_task_id"] = None
        if len(failures) < self.retry_count:

            async def again() -> None:
                await asyncio.sleep(self.retry_interval)
                await self._event(job, host, name, handler)

            job.spawn(again())
        else:
            self._conclude(job, host, "error", str(exc), _concluded_by(name))

    def _finalize(self, job: Job, host: HostTask, by: str) -> None:
        """``RunHostJob#finalize`` → ``check_exit_status``."""
        if host.output.get("cancel_sent"):
            self._conclude(job, host, "cancelled", TASK_CANCELLED, by)
        elif ruby_to_s(host.exit_status()) != "0":
            self._conclude(job, host, "error", JOB_FAILED, by)
        else:
            self._conclude(job, host, "success", None, by)

    def _conclude(self, job: Job, host: HostTask, result: str, error: str | None, by: str) -> None:
        if host.outcome is not None:
            return
        events = host.sorted_events()
        host.outcome = HostOutcome(
            hostname=host.hostname,
            key=host.key,
            task_id=host.task_id,
            result=result,
            exit_status=host.exit_status(),
            output="".join(ruby_to_s(e["event"]) for e in events),
            stdout="".join(ruby_to_s(e["event"]) for e in events if e["event_type"] == "stdout"),
            error=error,
            concluded_by=by,
            events=[*events, *([host.events["exit"]] if "exit" in host.events else [])],
        )
        if host.remote_state is not None:
            host.remote_state = "destroyed"  # ProxyAction#clean_remote_task (plan stopped)
        host.done.set()
        job.check_finished()

    # ---- event handlers (ProxyAction / REX ProxyAction) -----------------------------------

    def _callback_handler(self, data: dict[str, Any]) -> Callable[[Job, HostTask], Awaitable[bool]]:
        async def on_data(job: Job, host: HostTask) -> bool:
            host.output["proxy_output"] = data
            self.process_proxy_data(host, data)
            return True

        return on_data

    def _stopped_handler(self, exception: Any) -> Callable[[Job, HostTask], Awaitable[bool]]:
        async def on_proxy_action_stopped(job: Job, host: HostTask) -> bool:
            if exception is not None:
                raise StepError(TRIGGER_FAILED + str(exception))
            return await self._check_task_status(job, host)

        return on_proxy_action_stopped

    async def _missing(self, job: Job, host: HostTask) -> bool:
        raise StepError(MISSING)

    async def _check_task_status(self, job: Job, host: HostTask) -> bool:
        """REX ``ProxyAction#check_task_status``: read the task, store its output, finish if
        it is ``stopped`` or ``paused`` (404: missing)."""
        try:
            response = await self.status_of_task(
                host.proxy, host.proxy_task_id, request_id=job.request_id
            )
        except ProxyError as exc:
            if exc.status == 404:
                raise StepError(MISSING) from exc
            raise
        self.get_proxy_data(host, response)
        return response.get("state") in ("stopped", "paused")

    async def _cancel(self, job: Job, host: HostTask) -> bool:
        """``ProxyAction#cancel_proxy_task``."""
        if host.output.get("cancel_sent"):
            raise StepError(CANCEL_ENFORCED)
        await self.cancel_task(host.proxy, host.proxy_task_id, request_id=job.request_id)
        host.output["cancel_sent"] = True
        return False

    async def _abort(self, job: Job, host: HostTask) -> bool:
        await self.cancel_task(host.proxy, host.proxy_task_id, request_id=job.request_id)
        raise StepError(ABORTED)

    def get_proxy_data(self, host: HostTask, response: Any) -> dict[str, Any]:
        """``ProxyAction#get_proxy_data`` (the output of the action whose ``input.task_id`` is
        the Foreman task id, else ``{}``) + REX's ``process_proxy_data``."""
        if not isinstance(response, dict):
            raise StepError(f"NoMethodError: undefined method `[]' for {ruby_class(response)}")
        actions = response.get("actions")
        if not isinstance(actions, list):
            raise StepError(f"NoMethodError: undefined method `detect' for {ruby_class(actions)}")
        data: Any = {}
        for action in actions:
            action_input = action.get("input", {}) if isinstance(action, dict) else None
            if not isinstance(action_input, dict):
                raise StepError(
                    f"NoMethodError: undefined method `[]' for {ruby_class(action_input)}"
                )
            if action_input.get("task_id") == host.task_id:
                data = action.get("output", {}) or {}
                break
        self.process_proxy_data(host, data)
        return data

    @staticmethod
    def process_proxy_data(host: HostTask, data: Any) -> None:
        """REX ``ProxyAction#process_proxy_data``: one event per output record
        (``external_id`` = record ``id`` or its index; ``Time.at(timestamp)``), plus ``exit``
        when ``exit_status`` is set (its timestamp ``exit_status_timestamp`` or the last
        record's + 1 s); inserted with ``unique_by (template_invocation_id, external_id)``:
        the first of each wins."""
        if not isinstance(data, dict):
            raise StepError(f"NoMethodError: undefined method `[]' for {ruby_class(data)}")
        records = data.get("result")
        if not isinstance(records, list):
            raise StepError(
                f"NoMethodError: undefined method `each_with_index' for {ruby_class(records)}"
            )
        events: list[dict[str, Any]] = []
        for seq, update in enumerate(records):
            if not isinstance(update, dict):
                raise StepError("TypeError: no implicit conversion of String into Integer")
            timestamp = update.get("timestamp")
            if not isinstance(timestamp, int | float) or isinstance(timestamp, bool):
                raise StepError(
                    f"TypeError: can't convert {ruby_class(timestamp)} into an exact number"
                )
            external_id = update.get("id")
            if external_id is None or external_id is False:
                external_id = seq
            events.append(
                {
                    "external_id": ruby_to_s(external_id),
                    "event": update.get("output"),
                    "timestamp": float(timestamp),
                    "event_type": update.get("output_type"),
                }
            )
        exit_status = data.get("exit_status")
        if exit_status is not None and exit_status is not False:
            stamp = data.get("exit_status_timestamp")
            if stamp is None or stamp is False:
                stamp = (events[-1]["timestamp"] if events else time.time()) + 1
            elif not isinstance(stamp, int | float):
                raise StepError(
                    f"TypeError: can't convert {ruby_class(stamp)} into an exact number"
                )
            events.append(
                {
                    "external_id": "exit",
                    "event": exit_status,
                    "timestamp": float(stamp),
                    "event_type": "exit",
                }
            )
        for event in events:
            host.events.setdefault(event["external_id"], event)

    # ---- the safety-net poll ---------------------------------------------------------------

    async def _poll_loop(self, job: Job) -> None:
        """``set_clock`` at the job's first run, then every ``poll_interval`` while hosts wait."""
        while not job.done and job.polling_stopped is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.finished.wait(), self.poll_interval)
            if job.done:
                return
            await self.poll_once(job)

    async def poll_once(self, job: Job) -> PollRound:
        """One ``check_triggered`` round (the tests may call it directly)."""
        round_ = PollRound(time.time())
        job.polls.append(round_)
        triggered = [h for h in job.hosts if h.remote_state in ("triggered", "parent-triggered")]
        triggered.sort(key=lambda h: (h.proxy.url, h.index))
        deliveries: list[Awaitable[Any]] = []
        for start in range(0, len(triggered), POLL_BATCH_SIZE):
            chunk = triggered[start : start + POLL_BATCH_SIZE]
            by_proxy: dict[str, list[HostTask]] = {}
            for host in chunk:
                by_proxy.setdefault(host.proxy.url, []).append(host)
            for tasks in by_proxy.values():
                ids = _uniq([h.remote_task_id for h in tasks] + [h.parent_task_id for h in tasks])
                round_.requests.append(ids)
                try:
                    results = await self.task_states(tasks[0].proxy, ids, request_id=job.request_id)
                except Exception as exc:  # "we'll try again next time": {}
                    message = f"Failed to check on tasks on proxy at {tasks[0].proxy.url}: {exc}"
                    log.warning(message)
                    round_.failed.append(message)
                    results = {}
                try:
                    missing, stopped = _task_results(tasks, results)
                except (TypeError, AttributeError) as exc:
                    round_.crashed = f"{type(exc).__name__}: {exc}"
                    job.polling_stopped = round_.crashed
                    break
                round_.missing += [h.key for h in missing]
                round_.stopped += [h.key for h in stopped]
                for host in missing:
                    deliveries.append(
                        self._worker(self._event(job, host, "missing", self._missing))
                    )
                for host in stopped:
                    handler = self._stopped_handler(None)
                    deliveries.append(self._worker(self._event(job, host, "poll", handler)))
        await asyncio.gather(*deliveries)
        return round_

    # ---- user actions ----------------------------------------------------------------------

    async def cancel(self, job: Job, *hosts: str) -> None:
        """Cancel (the job's hosts, or the named ones): ``Cancellable::Cancel`` to each step."""
        await self._deliver_all(job, hosts, "cancel", self._cancel)

    async def abort(self, job: Job, *hosts: str) -> None:
        await self._deliver_all(job, hosts, "abort", self._abort)

    async def halt(self, job: Job, *hosts: str) -> None:
        """``world.halt``: the Foreman task ends; nothing is sent to the proxy."""
        for host in self._select(job, hosts):
            async with host.lock:
                self._conclude(job, host, "halted", "halted", "halt")

    def _select(self, job: Job, hosts: Iterable[str]) -> list[HostTask]:
        names = list(hosts)
        return [job.host(name) for name in names] if names else list(job.hosts)

    async def _deliver_all(
        self,
        job: Job,
        hosts: Iterable[str],
        name: str,
        handler: Callable[[Job, HostTask], Awaitable[bool]],
    ) -> None:
        await asyncio.gather(
            *(self._worker(self._event(job, h, name, handler)) for h in self._select(job, hosts))
        )

    async def live_output(self, job: Job, host_name: str) -> LiveOutput:
        """REX ``RunHostJob#fill_continuous_output``: while the task runs and no callback
        came, ``GET .../tasks/:id/status`` (its records are stored as events); an error is
        shown as "Error loading data from proxy"."""
        host = job.host(host_name)
        read = False
        error = None
        if host.outcome is None and "proxy_output" not in host.output:
            read = True
            try:
                response = await self.status_of_task(
                    host.proxy, host.proxy_task_id, request_id=job.request_id
                )
                self.get_proxy_data(host, response)
            except (ProxyError, StepError) as exc:
                error = f"{LIVE_ERROR}: {exc}"
        events = sorted(host.events.values(), key=lambda e: e["timestamp"])
        return LiveOutput(events, error, read)

    # ---- the callback controller -----------------------------------------------------------

    def app(self) -> Starlette:
        return Starlette(routes=[Route(CALLBACK_PATH, self._callback, methods=["POST"])])

    async def _callback(self, request: Request) -> JSONResponse:
        raw = await request.body()
        record = CallbackRequest(
            time.time(), dict(request.headers), raw, request.client.host if request.client else None
        )
        self.callback_requests.append(record)

        def answer(status: int, body: Any, error: str | None = None) -> JSONResponse:
            record.status, record.answered, record.error = status, time.time(), error
            return JSONResponse(body, status_code=status)

        if self.callback_status != 200:
            return answer(
                self.callback_status,
                {"error": {"message": "refused on purpose"}},
                f"answered {self.callback_status} on purpose",
            )
        if "json" not in request.headers.get("content-type", ""):
            # Rails leaves the body unparsed: params[:callbacks] is nil, nil.map raises.
            return answer(500, {"error": "undefined method `map' for nil"}, "not sent as JSON")
        try:
            body = json.loads(raw)
        except ValueError:
            return answer(
                400, {"error": "parse error"}, "ActionDispatch::Http::Parameters::ParseError"
            )
        params = body if isinstance(body, dict) else {"_json": body}
        callbacks = [params] if "callback" in params else params.get("callbacks")
        if not isinstance(callbacks, list):
            return answer(
                500, {"error": "undefined method `map'"}, "no callback, no callbacks array"
            )
        if not all(isinstance(p, dict) and isinstance(p.get("callback"), dict) for p in callbacks):
            return answer(
                500, {"error": "undefined method `[]' for nil"}, "an entry without callback"
            )
        if any(
            isinstance(p["callback"].get("task_id"), str) and not is_uuid(p["callback"]["task_id"])
            for p in callbacks
        ):
            return answer(500, {"error": "PG::InvalidTextRepresentation"}, "a task_id is no uuid")
        for payload in callbacks:
            callback = payload["callback"]
            try:
                step_id = ruby_to_i(callback.get("step_id"))
            except TypeError as exc:
                return answer(500, {"error": str(exc)}, "step_id")
            data = payload.get("data")
            if not isinstance(data, dict):  # data.to_unsafe_h
                return answer(
                    500,
                    {"error": f"undefined method `to_unsafe_h' for {ruby_class(data)}"},
                    "an entry whose data is not an object",
                )
            record.entries.append(self._deliver_callback(callback.get("task_id"), step_id, data))
        return answer(200, {"message": "processing"})

    def _deliver_callback(self, task_id: Any, step_id: int, data: dict[str, Any]) -> CallbackEntry:
        """``world.event(execution_plan_id, step_id, CallbackData)``: asynchronous, the answer
        does not wait for it (a refused event is only logged by Foreman)."""
        host = self._tasks.get(task_id) if isinstance(task_id, str) else None
        if host is None:
            return CallbackEntry(task_id, step_id, data, "unknown task")
        if step_id != host.step_id:
            return CallbackEntry(task_id, step_id, data, "no such step")
        job = next(j for j in self.jobs if host in j.hosts)
        job.spawn(self._event(job, host, "callback", self._callback_handler(data)))
        return CallbackEntry(task_id, step_id, data, "delivered")

    def callbacks_for(self, task_id: str) -> list[CallbackEntry]:
        return [e for r in self.callback_requests for e in r.entries if e.task_id == task_id]

    def requests_to(self, suffix: str, method: str | None = None) -> list[ProxyRequest]:
        return [
            r
            for r in self.requests
            if r.path.endswith(suffix) and (method is None or r.method == method)
        ]

    # ---- the proxy's features, version, keys ----------------------------------------------

    async def refresh_proxy(self, proxy: ProxyLike) -> ProxyRecord:
        """``SmartProxy#refresh`` (``associate_features`` through ``get_features``) and REX's
        ``update_pubkey`` / ``update_ca_pubkey``."""
        proxy = as_proxy(proxy)
        record = ProxyRecord(proxy.url)
        try:
            reply = await self._features(proxy)
            if not isinstance(reply, dict):
                record.errors.append(
                    "An invalid response was received while requesting available features "
                    "from this proxy"
                )
                return record
            names = feature_name_map()
            valid = {name: value for name, value in reply.items() if name in names}
            if valid:
                for name, value in valid.items():
                    value = value if isinstance(value, dict) else {}
                    record.features[names[name]] = {
                        "capabilities": value.get("capabilities"),
                        "settings": value.get("settings"),
                    }
            elif reply:
                record.errors.append(
                    f'Features "{", ".join(reply)}" in this proxy are not recognized by Foreman.'
                )
            else:
                record.errors.append(
                    "No features found on this proxy, please make sure you enable at least one "
                    "feature"
                )
        except Exception as exc:
            record.errors.append(f"Unable to communicate with the proxy: {exc}")
            return record
        if record.has_feature("SSH", "Script"):
            try:
                text = await self._call(
                    "GET", f"{proxy.url}/ssh/pubkey", json_api=False, parse=False
                )
                record.pubkey = text.strip()
            except ProxyError as exc:
                record.errors.append(f"Unable to fetch public key: {exc}")
            try:
                text = await self._call(
                    "GET", f"{proxy.url}/ssh/ca_pubkey", json_api=False, parse=False
                )
                record.ca_pubkey = text.strip() or None
            except ProxyError as exc:
                if exc.status != 404:  # 404: logged, no CA key
                    record.errors.append(f"Unable to fetch CA public key: {exc}")
        return record

    async def _features(self, proxy: SmartProxy) -> Any:
        """``get_features``: ``/v2/features`` minus the features not ``running``; a 404 there
        falls back to ``/features`` (a list)."""
        try:
            reply = await self._call("GET", f"{proxy.url}/v2/features", json_api=False)
        except ProxyError as exc:
            if exc.status != 404:
                raise ProxyError(
                    f"Unable to detect features ([{exc.kind}]: {exc}) for proxy "
                    f"{proxy.url}/v2/features",
                    kind=exc.kind,
                    status=exc.status,
                ) from exc
            reply = await self._call("GET", f"{proxy.url}/features", json_api=False)
            return {name: {} for name in reply} if isinstance(reply, list) else reply
        if not isinstance(reply, dict):
            raise TypeError(f"undefined method `with_indifferent_access' for {ruby_class(reply)}")
        return {
            name: value
            for name, value in reply.items()
            if isinstance(value, dict) and value.get("state") == "running"
        }

    async def drop_from_known_hosts(self, proxy: ProxyLike, hostname: str) -> Any:
        """REX ``ProxyAPI::RemoteExecutionSSH#drop_from_known_hosts`` (no caller today):
        ``DELETE /ssh/known_hosts/:name``."""
        url = f"{as_proxy(proxy).url}/ssh/known_hosts/{hostname}"
        return await self._call("DELETE", url, json_api=False)

    async def proxy_version(self, proxy: ProxyLike) -> Any:
        """``ProxyStatus::Version#versions``: ``GET /version`` (``version``, ``modules``)."""
        return await self._call("GET", f"{as_proxy(proxy).url}/version", json_api=False)

    # ---- cockpit ---------------------------------------------------------------------------

    async def cockpit_session(
        self, proxy: ProxyLike, params: Mapping[str, Any], *, ssl: Any = None, timeout: float = 30
    ) -> CockpitReply:
        """``foreman-cockpit-session``'s ``Relay#initialize_proxy_connection!`` and
        ``upgrade_connection!``: the raw request, then the answer read as header lines
        (``Net::HTTPResponse.each_response_header``: a line without a colon, e.g. an HTTP
        status line, raises "wrong header line format"); ``Status`` decides."""
        from tests.smart_proxy_remote_execution_ssh.test_cockpit import session_request

        proxy = as_proxy(proxy)
        parts = urlsplit(proxy.url)
        reader, writer = await asyncio.open_connection(
            parts.hostname, parts.port, ssl=ssl, server_hostname=parts.hostname if ssl else None
        )
        writer.write(session_request(proxy.url, dict(params)))
        await writer.drain()
        headers: dict[str, str] = {}
        try:
            while True:
                line = (await asyncio.wait_for(reader.readuntil(b"\n"), timeout)).decode()
                line = line.rstrip()
                if not line:
                    break
                key, sep, value = line.strip().partition(":")
                if not sep:
                    raise ValueError("wrong header line format")
                headers[key.strip()] = value.strip()
        except (ValueError, asyncio.IncompleteReadError) as exc:
            writer.close()
            message = (
                "Net::HTTPBadResponse: wrong header line format"
                if isinstance(exc, ValueError)
                else "EOFError: end of file reached"
            )
            return CockpitReply(0, headers, "", "crash", message)
        status = ruby_to_i(headers.get("Status"))
        length = ruby_to_i(headers.get("Content-Length"))
        if status == 101:
            return CockpitReply(101, headers, "", None, None, reader, writer)
        body = ""
        if length:
            body = (await asyncio.wait_for(reader.readexactly(length), timeout)).decode()
        writer.close()
        if status == 404:
            return CockpitReply(
                status,
                headers,
                body,
                "access-denied",
                f"The proxy {parts.hostname} does not support web console sessions",
            )
        if 400 <= status <= 499:
            if "cockpit-bridge: command not found" in body:
                # `params['hostname']` inside Relay: a NameError in the original
                return CockpitReply(
                    status, headers, body, "crash", "NameError: undefined local variable `params'"
                )
            return CockpitReply(status, headers, body, "access-denied", body)
        return CockpitReply(status, headers, body, "error", f"Error talking to smart proxy: {body}")


# ---- helpers ---------------------------------------------------------------------------------


def _task_results(tasks: list[HostTask], results: Any) -> tuple[list[HostTask], list[HostTask]]:
    """``WatchDelegatedProxySubTasks#process_task_results`` → (missing, stopped).

    Missing: absent, and no parent (nil), or the parent absent, or the parent's state is in
    ``%(stopped paused)`` (a *string*: Ruby's ``String#include?`` is a substring test, and a
    state that is not a string raises TypeError). Stopped: present and ``stopped``/``paused``."""
    if not isinstance(results, dict):
        raise AttributeError(f"undefined method `key?' for {ruby_class(results)}")
    missing, stopped = [], []
    for task in tasks:
        if task.remote_task_id not in results:
            parent = task.parent_task_id
            if parent is None or parent not in results:
                missing.append(task)
                continue
            entry = results[parent]
            if not isinstance(entry, dict):
                raise TypeError(
                    f"no implicit conversion of String into Integer ({ruby_class(entry)})"
                )
            state = entry.get("state")
            if not isinstance(state, str):
                raise TypeError(f"no implicit conversion of {ruby_class(state)} into String")
            if state in "stopped paused":
                missing.append(task)
        else:
            entry = results[task.remote_task_id]
            state = entry.get("state") if isinstance(entry, dict) else None
            if state in ("stopped", "paused"):
                stopped.append(task)
    return missing, stopped


def _uniq(values: Iterable[Any]) -> list[Any]:
    seen: list[Any] = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def _concluded_by(event: str) -> str:
    return {"trigger-stopped": "trigger", "missing": "poll"}.get(event, event)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _maybe_json(text: str) -> Any:
    if not text:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text
