"""The fault suite's harness: real services as subprocesses, a recording Foreman, the tallies.

* :class:`Foreman`: a fake Foreman in the test's event loop (plain HTTP on a free loopback port)
  that records every callback request per task id: when it arrived, when it was answered, with
  which status. ``mode`` is ``up`` (200), ``error`` (500) or ``down`` (the listener is closed:
  connections are refused).
* :class:`Service`: ``.venv/bin/smart-proxy -c <dir>`` (``kind="proxy"``: the dynflow and
  script plugins in-process, the task API under ``/dynflow``) or
  ``.venv/bin/smart-proxy-dynflow-core -1 -c <dir>`` (``kind="core"``), exactly as shipped
  (uvloop, httptools): it writes the config directory, starts, SIGKILLs, SIGTERMs and restarts
  the process on the same database.
* :func:`simulated_job` / :func:`ssh_job`: one entry of Foreman's batch launch (spec
  proxy_dynflow.md §6.4), for simulated hosts (``REX_SIMULATE``) or a real sshd.
* :func:`launch_batches`: ``POST .../tasks/launch`` (operation ``ssh``) in batches, as Foreman.
* :func:`snapshot`: what the database says at a kill (read before the restart): the phase of
  every task and which callbacks the proxy had recorded as delivered.
* :class:`Tally`: the figures of a run (lost, doubled, missing, reported failed, ran twice,
  not final), each printed as one JSON line (:func:`emit`, like ``bench/``) and asserted.

Every wait polls a condition (:func:`wait_until`); nothing sleeps a fixed time to let the
system get somewhere, only to let time pass on purpose (an outage, the moment of a kill).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.services import Served, free_port, start_app

RUN_SCRIPT = "Proxy::RemoteExecution::Ssh::Actions::RunScript"
RUNNER_CLASS_HINT = "ScriptRunner"
CALLBACK_CLASS_HINT = "Callback"
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
FIGURES_ENV = "RELIABILITY_FIGURES"
"""When set, every figure line is also appended to this file (``make reliability`` sets it)."""


# ---- figures ----------------------------------------------------------------------------------


def emit(figure: str, value: float, *, unit: str = "tasks", **context: Any) -> dict[str, Any]:
    """Print one figure as a JSON line (and append it to ``$RELIABILITY_FIGURES``)."""
    line: dict[str, Any] = {"figure": figure, "value": value, "unit": unit, **context}
    text_line = json.dumps(line, sort_keys=False, default=str)
    print(text_line, flush=True)
    target = os.environ.get(FIGURES_ENV)
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(text_line + "\n")
    return line


async def wait_until(
    predicate: Callable[[], Awaitable[Any]], timeout: float, interval: float = 0.2
) -> Any:
    """Await ``predicate()`` until it is truthy (returned) or ``timeout`` passes (returns the
    last falsy value: the caller asserts with figures instead of a bare timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await predicate()
        if result or time.monotonic() >= deadline:
            return result
        await asyncio.sleep(interval)


# ---- the fake Foreman -------------------------------------------------------------------------


@dataclass
class CallbackRecord:
    task_id: str
    received: float
    answered: float
    status: int
    data: Any


@dataclass
class Foreman:
    """A fake Foreman recording callbacks per task id (see the module doc)."""

    port: int = field(default_factory=free_port)
    mode: str = "up"
    latency: float = 0.0
    """Seconds Foreman takes to answer a callback (a real one takes some)."""
    records: list[CallbackRecord] = field(default_factory=list)
    refused_since: float | None = None
    trap: tuple[str, Callable[[], Any]] | None = None
    """One shot: ``("received", action)`` runs ``action`` when the next callback arrives,
    before it is answered; ``("answered", action)`` right after a 200 was sent."""
    malformed: list[Any] = field(default_factory=list)
    """Bodies answered 500 as foreman-tasks' ``TasksController#callback`` would: an entry whose
    ``callback`` or ``data`` is not an object (it calls ``callback[:task_id]`` and
    ``data.to_unsafe_h`` on each, so one ``null`` fails the whole request)."""
    _served: Served | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> Starlette:
        async def callback(request: Request) -> JSONResponse:
            received = time.time()
            body = json.loads(await request.body())
            entries = body["callbacks"] if "callbacks" in body else [body]
            if not all(
                isinstance(e.get("callback"), dict) and isinstance(e.get("data"), dict)
                for e in entries
            ):
                self.malformed.append(body)
                return JSONResponse({"error": "undefined method for nil"}, status_code=500)
            if self.trap is not None and self.trap[0] == "received":
                trap, self.trap = self.trap, None
                trap[1]()
            if self.latency:
                await asyncio.sleep(self.latency)
            status = 200 if self.mode == "up" else 500
            answered = time.time()
            for entry in entries:
                self.records.append(
                    CallbackRecord(
                        entry["callback"]["task_id"], received, answered, status, entry["data"]
                    )
                )
            if status != 200:
                return JSONResponse({"error": "Foreman is failing on purpose"}, status_code=status)
            background = None
            if self.trap is not None and self.trap[0] == "answered":
                trap, self.trap = self.trap, None
                background = BackgroundTask(trap[1])
            return JSONResponse({"message": "processing"}, background=background)

        return Starlette(
            routes=[Route("/foreman_tasks/api/tasks/callback", callback, methods=["POST"])]
        )

    async def start(self) -> None:
        self._served = await start_app(self.app(), self.port)

    async def stop(self) -> None:
        if self._served is not None:
            await self._served.stop()
            self._served = None

    async def go_down(self) -> None:
        """Close the listener: callbacks get ``connection refused``."""
        self.mode = "down"
        self.refused_since = time.time()
        await self.stop()

    async def come_back(self) -> None:
        self.mode = "up"
        if self._served is None:
            await self.start()

    def delivered(self) -> dict[str, list[CallbackRecord]]:
        """The 200-answered callbacks per task id."""
        result: dict[str, list[CallbackRecord]] = defaultdict(list)
        for record in self.records:
            if record.status == 200:
                result[record.task_id].append(record)
        return result

    def delivered_keys(self) -> set[str]:
        """The keys (see :func:`foreman_task`) of the tasks called back with a 200."""
        return {r.task_id.removeprefix("foreman-") for r in self.records if r.status == 200}

    def received_before(self, instant: float) -> set[str]:
        """Task ids whose callback had reached Foreman at ``instant`` (and was answered 200,
        maybe after it): a crash at ``instant`` may make the proxy send them again."""
        return {r.task_id for r in self.records if r.status == 200 and r.received <= instant}


# ---- launch input -------------------------------------------------------------------------------


def foreman_task(key: str) -> str:
    """The Foreman task id of the proxy task ``key`` (its callback's ``task_id``)."""
    return f"foreman-{key}"


def _job(key: str, hostname: str, port: int, user: str, workdir: str, script: str) -> dict:
    return {
        "action_class": RUN_SCRIPT,
        "action_input": {
            "proxy_operation_name": "ssh",
            "time_to_pickup": 86400,
            "ssh_user": user,
            "effective_user": user,
            "effective_user_method": "sudo",
            "cleanup_working_dirs": True,
            "remote_working_dir": workdir,
            "ssh_port": port,
            "hostname": hostname,
            "script": script,
            "execution_timeout_interval": None,
            "secrets": {
                "ssh_password": None,
                "key_passphrase": None,
                "effective_user_password": None,
            },
            "use_batch_triggering": True,
            "first_execution": False,
            "alternative_names": {"fqdn": f"host-{key[:8]}.example.com"},
            "connection_options": {
                "retry_interval": 15,
                "retry_count": 4,
                "proxy_batch_triggering": True,
            },
            "proxy_url": "http://127.0.0.1",
            "proxy_action_name": RUN_SCRIPT,
            "callback": {"task_id": foreman_task(key), "step_id": 3},
        },
    }


def simulated_job(key: str) -> dict[str, Any]:
    """A job for a simulated host (the service runs with ``REX_SIMULATE``)."""
    return _job(key, "simulated.invalid", 22, "root", "/var/tmp", "#!/bin/sh\ntrue\n")


def ssh_job(key: str, host: str, port: int, user: str, workdir: Path, script: str) -> dict:
    return _job(key, host, port, user, str(workdir), script)


def new_keys(count: int, rng: random.Random) -> list[str]:
    """``count`` task UUIDs drawn from ``rng`` (a seed reproduces the run's ids)."""
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]


# ---- the service ---------------------------------------------------------------------------


def _bin(name: str) -> str:
    script = Path(sys.executable).parent / name
    if not script.exists():
        raise AssertionError(f"{script} missing: run `make venv`")
    return str(script)


def _yaml(values: Mapping[str, Any]) -> str:
    """``:key: value`` settings (JSON values are valid YAML)."""
    return "---\n" + "".join(f":{k}: {json.dumps(v)}\n" for k, v in values.items())


@dataclass
class Service:
    """The proxy or the standalone core as a subprocess (see the module doc)."""

    workdir: Path
    kind: str  # "proxy" | "core"
    database: str  # a file path or a database URL
    foreman_url: str
    env: dict[str, str] = field(default_factory=dict)
    dynflow: dict[str, Any] = field(default_factory=dict)
    rex: dict[str, Any] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    start_seconds: list[float] = field(default_factory=list)
    killed_at: float = 0.0

    def __post_init__(self) -> None:
        assert self.kind in ("proxy", "core"), self.kind
        self.config_dir = self.workdir / f"{self.kind}-config"
        (self.config_dir / "settings.d").mkdir(parents=True, exist_ok=True)
        self.log_file = self.workdir / f"{self.kind}.log"
        self.stderr_file = self.workdir / f"{self.kind}-stderr.txt"
        self._write_config()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        """The prefix of the task API (``/dynflow`` in the proxy)."""
        return "/dynflow" if self.kind == "proxy" else ""

    def _write_config(self) -> None:
        rex = {
            "enabled": True,
            "cockpit_integration": False,
            "known_hosts_file": str(self.workdir / "known_hosts"),
            **self.rex,
        }
        if "ssh_identity_key_file" not in rex:
            key = self.workdir / "ssh" / "id_rsa_foreman_proxy"
            if not key.exists():
                subprocess.run(
                    [sys.executable, "-m", "smart_proxy_remote_execution_ssh.keygen", str(key)],
                    check=True,
                    capture_output=True,
                )
            rex["ssh_identity_key_file"] = str(key)
        if self.kind == "proxy":
            (self.config_dir / "settings.yml").write_text(
                _yaml(
                    {
                        "http_port": self.port,
                        "bind_host": "127.0.0.1",
                        "foreman_url": self.foreman_url,
                        "log_file": str(self.log_file),
                        "log_level": "INFO",
                        "settings_directory": str(self.config_dir / "settings.d"),
                    }
                )
            )
            dynflow = {"enabled": True, "database": self.database, **self.dynflow}
            (self.config_dir / "settings.d" / "dynflow.yml").write_text(_yaml(dynflow))
        else:
            values = {
                "listen": "127.0.0.1",
                "port": self.port,
                "database": self.database,
                "foreman_url": self.foreman_url,
                "log_file": str(self.log_file),
                "log_level": "INFO",
                **self.dynflow,
            }
            (self.config_dir / "settings.yml").write_text(_yaml(values))
        (self.config_dir / "settings.d" / "remote_execution_ssh.yml").write_text(_yaml(rex))

    def command(self) -> list[str]:
        if self.kind == "proxy":
            return [_bin("smart-proxy"), "-c", str(self.config_dir)]
        return [_bin("smart-proxy-dynflow-core"), "-1", "-c", str(self.config_dir)]

    async def start(self, timeout: float = 60.0) -> None:
        """Start the process and wait until it answers HTTP."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = {k: v for k, v in os.environ.items() if k not in ("DYNFLOW_DB_CONN_STRING",)}
        env.pop("REX_SIMULATE", None)
        env.update(self.env)
        with open(self.stderr_file, "ab") as stderr:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        self.starts += 1
        began = time.monotonic()
        deadline = began + timeout
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"{self.kind} exited with {self.proc.returncode}: {self.tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    answer = await client.get(f"{self.api}/tasks/operations")
                    if answer.status_code == 200:
                        assert "ssh" in answer.json(), (
                            f"{self.kind}: the ssh operation is missing: {self.tail()}"
                        )
                        self.start_seconds.append(round(time.monotonic() - began, 2))
                        return
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.kind} did not answer in {timeout} s")
                await asyncio.sleep(0.05)

    def kill(self) -> float:
        """SIGKILL; returns the instant (time.time()) the signal was sent."""
        assert self.proc is not None and self.proc.poll() is None, "not running"
        instant = self.killed_at = time.time()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        return instant

    async def terminate(self, timeout: float = 60.0) -> float:
        """SIGTERM and wait for the exit (async: the test's Foreman keeps serving meanwhile);
        returns the seconds it took. The exit code must be 0."""
        assert self.proc is not None and self.proc.poll() is None, "not running"
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        while self.proc.poll() is None:
            if time.monotonic() - started > timeout:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"{self.kind} did not stop within {timeout} s of SIGTERM")
            await asyncio.sleep(0.05)
        assert self.proc.returncode == 0, f"exit {self.proc.returncode}: {self.tail()}"
        return time.monotonic() - started

    def close(self) -> None:
        """Stop whatever still runs (teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_text(self) -> str:
        parts = []
        for path in (self.log_file, self.stderr_file):
            with contextlib.suppress(FileNotFoundError):
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().strip().splitlines()[-lines:])

    def tracebacks(self) -> int:
        return self.log_text().count("Traceback (most recent call last)")


# ---- databases ---------------------------------------------------------------------------------


async def _pg_admin(statement: str, name: str, host: str, port: int) -> None:
    conn = await asyncpg.connect(host=host, port=port, user=PG_USER, database="postgres")
    try:
        if statement == "drop":
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        else:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def database(backend: str, directory: Path, *, host: str = PG_HOST, port: int = PG_PORT):
    """A fresh database for one run: a SQLite file in ``directory``, or a PostgreSQL database
    ``rel_<random>`` (dropped afterwards). Yields the ``database`` setting (path or URL)."""
    if backend == "sqlite":
        yield str(directory / "dynflow.sqlite")
        return
    assert backend == "postgresql", backend
    name = "rel_" + secrets.token_hex(6)
    try:
        await _pg_admin("create", name, host, port)
    except (OSError, asyncpg.PostgresError) as exc:
        raise AssertionError(
            f"cannot create a database on {PG_USER}@{host}:{port}: {exc!r}"
            " (run scripts/test-deps.sh)"
        ) from exc
    try:
        yield f"postgresql://{PG_USER}@{host}:{port}/{name}"
    finally:
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            await _pg_admin("drop", name, host, port)


def sqlalchemy_url(setting: str) -> str:
    if setting.startswith("postgresql://"):
        return "postgresql+asyncpg://" + setting.removeprefix("postgresql://")
    return f"sqlite+aiosqlite:///{setting}"


# ---- launching ---------------------------------------------------------------------------------


@dataclass
class Launches:
    acknowledged: set[str] = field(default_factory=set)
    refused: dict[str, int] = field(default_factory=dict)  # key -> last HTTP status (0: none)
    parents: list[str] = field(default_factory=list)
    retries: int = 0
    existing_on_retry: int = 0  # keys of batches a retry acknowledged (maybe stored before)


async def launch_batches(
    service: Service,
    jobs: Mapping[str, dict[str, Any]],
    *,
    batch_size: int = 100,
    spacing: float = 0.0,
    retry_for: float = 0.0,
    launches: Launches | None = None,
) -> Launches:
    """``POST <api>/tasks/launch`` with ``operation: ssh`` in batches of ``batch_size``, as
    Foreman does; a 200 acknowledges every key of its batch. ``spacing`` seconds between
    batches (so that a kill finds tasks in every phase).

    Like Foreman's trigger retries, a batch that got no answer (the service was down) or a 503
    is sent again every second for ``retry_for`` seconds; a retry of a batch whose first
    attempt was stored (only its answer was lost) is answered 200 like the first, and its
    tasks run once: the proxy has them and owes their callbacks."""
    launches = launches or Launches()
    keys = list(jobs)
    async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:
        for index in range(0, len(keys), batch_size):
            if index and spacing:
                await asyncio.sleep(spacing)
            batch = keys[index : index + batch_size]
            body = {"operation": "ssh", "input": {k: jobs[k] for k in batch}, "options": {}}
            deadline = time.monotonic() + retry_for
            attempt = 0
            while True:
                attempt += 1
                try:
                    answer = await client.post(f"{service.api}/tasks/launch", json=body)
                    status = answer.status_code
                except httpx.HTTPError:
                    status = 0
                if status == 200:
                    launches.acknowledged.update(batch)
                    launches.parents.append(answer.json()["parent"]["task_id"])
                    if attempt > 1:
                        launches.existing_on_retry += len(batch)
                    break
                if status in (0, 503) and time.monotonic() < deadline:
                    launches.retries += 1
                    await asyncio.sleep(1.0)
                    continue
                launches.refused.update(dict.fromkeys(batch, status))
                break
        for key in launches.acknowledged:
            launches.refused.pop(key, None)
    return launches


async def plan_states(service: Service, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``POST <api>/tasks/status``: state and result of each known id."""
    keys = list(keys)
    result: dict[str, dict[str, Any]] = {}
    async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:
        for index in range(0, len(keys), 500):
            answer = await client.post(
                f"{service.api}/tasks/status", json={"task_ids": keys[index : index + 500]}
            )
            answer.raise_for_status()
            result.update(answer.json())
    return result


# ---- the database at a kill --------------------------------------------------------------------


PHASES = (
    "not planned",
    "planned",
    "connecting",
    "running",
    "exit marker seen",
    "finalizing",
    "callback in flight",
    "callback recorded",
    "done",
)


@dataclass
class Snapshot:
    """What the store held right after a kill (read before the restart)."""

    phases: Counter[str]
    callback_recorded: set[str]  # keys whose callback step is stored as success
    plans: dict[str, str]  # key -> plan state


async def snapshot(
    setting: str, keys: Iterable[str], exit_seen: set[str] | None = None
) -> Snapshot:
    """The phase of every task ``key`` in the store (``exit_seen``: keys whose exit marker the
    host shows, for the real-sshd variant)."""
    keys = set(keys)
    engine = create_async_engine(sqlalchemy_url(setting))
    try:
        async with engine.connect() as conn:
            plans = {
                row[0]: row[1]
                for row in await conn.execute(
                    text("SELECT uuid, state FROM dynflow_execution_plans")
                )
                if row[0] in keys
            }
            steps: dict[str, dict[str, str]] = defaultdict(dict)
            rows = await conn.execute(
                text(
                    "SELECT execution_plan_uuid, action_class, state FROM dynflow_steps"
                    " WHERE class LIKE '%RunStep%'"
                )
            )
            for plan, action_class, state in rows:
                if plan in keys:
                    kind = (
                        "runner"
                        if RUNNER_CLASS_HINT in (action_class or "")
                        else "callback"
                        if CALLBACK_CLASS_HINT in (action_class or "")
                        else "other"
                    )
                    steps[plan][kind] = state
            started = {
                row[0]
                for row in await conn.execute(
                    text(
                        "SELECT DISTINCT execution_plan_uuid FROM dynflow_output_chunks"
                        " WHERE kind = 'runner_started' OR chunk NOT IN ('[]', 'null')"
                    )
                )
            }
    finally:
        await engine.dispose()
    phases: Counter[str] = Counter()
    recorded: set[str] = set()
    for key in keys:
        state = plans.get(key)
        runner = steps[key].get("runner")
        callback = steps[key].get("callback")
        if callback == "success":
            recorded.add(key)
        if state is None:
            phase = "not planned"
        elif state == "stopped":
            phase = "done"
        elif callback == "success":
            phase = "callback recorded"
        elif callback in ("running", "suspended"):
            phase = "callback in flight"
        elif runner in ("success", "error"):
            phase = "finalizing"
        elif exit_seen is not None and key in exit_seen:
            phase = "exit marker seen"
        elif runner in ("running", "suspended") and key in started:
            phase = "running"
        elif runner in ("running", "suspended"):
            phase = "connecting"
        else:
            phase = "planned"
        phases[phase] += 1
    return Snapshot(phases, recorded, plans)


# ---- tallies ---------------------------------------------------------------------------------


def stdout_of(data: Mapping[str, Any]) -> str:
    return "".join(
        r.get("output", "") for r in data.get("result") or [] if r.get("output_type") == "stdout"
    )


@dataclass
class Tally:
    """The figures of one run (see :meth:`figures`)."""

    scenario: str
    context: dict[str, Any]
    acknowledged: set[str]
    foreman: Foreman
    final_states: dict[str, dict[str, Any]]
    kill_instants: list[float] = field(default_factory=list)
    restart_instants: list[float] = field(default_factory=list)
    """When each restart began (after its kill): a callback Foreman handled before it was sent
    by the killed process, maybe after ``kill_instants`` (Foreman, in this test's event loop,
    handles a request some milliseconds after it arrived); defaults to the kill instants."""
    snapshots: list[Snapshot] = field(default_factory=list)
    host_runs: dict[str, int] | None = None  # key -> times the script ran (marker lines)
    expected_exit: int = 0
    expected_stdout: Callable[[str], str] | None = None
    lines: list[dict[str, Any]] = field(default_factory=list)

    def compute(self) -> dict[str, int]:
        delivered = self.foreman.delivered()
        by_key = {key: delivered.get(foreman_task(key), []) for key in self.acknowledged}
        in_flight: set[str] = set()
        window = 0.0
        restarts = self.restart_instants or self.kill_instants
        for instant, restart, snap in zip(
            self.kill_instants, restarts, self.snapshots, strict=False
        ):
            received = self.foreman.received_before(restart)
            flying = {
                key
                for key in self.acknowledged
                if foreman_task(key) in received and key not in snap.callback_recorded
            }
            in_flight |= flying
            for key in flying:
                first = min(r.answered for r in by_key[key])
                window = max(window, instant - first)
        self.window = window
        doubled = {key for key, records in by_key.items() if len(records) > 1}
        missing = {key for key, records in by_key.items() if not records}
        reported_failed = set()
        wrong_output = set()
        for key, records in by_key.items():
            for record in records:
                if record.data.get("exit_status") != self.expected_exit:
                    reported_failed.add(key)
                if self.expected_stdout is not None and stdout_of(record.data) != (
                    self.expected_stdout(key)
                ):
                    wrong_output.add(key)
        not_final = {
            key
            for key in self.acknowledged
            if (self.final_states.get(key) or {}).get("state") != "stopped"
        }
        lost = {key for key in self.acknowledged if key not in self.final_states}
        figures = {
            "tasks_acknowledged": len(self.acknowledged),
            "tasks_lost": len(lost),
            "callbacks_missing": len(missing),
            "callbacks_doubled": len(doubled),
            "callbacks_doubled_outside_window": len(doubled - in_flight),
            "callbacks_in_flight_at_kill": len(in_flight),
            # The longest a callback Foreman had answered waited for the proxy's record.
            "record_lag_max_ms": round(window * 1000),
            "reported_failed": len(reported_failed),
            "wrong_output": len(wrong_output),
            "not_final": len(not_final),
        }
        if self.host_runs is not None:
            runs = {key: self.host_runs.get(key, 0) for key in self.acknowledged}
            figures["scripts_run_twice"] = sum(1 for n in runs.values() if n > 1)
            figures["scripts_never_run"] = sum(1 for n in runs.values() if n == 0)
            figures["ran_but_reported_failed"] = sum(
                1 for key in reported_failed if runs.get(key, 0) >= 1
            )
        self.examples = {
            "missing": sorted(missing)[:3],
            "doubled": sorted(doubled)[:3],
            "reported_failed": [
                by_key[k][0].data.get("exit_status") for k in sorted(reported_failed)[:3]
            ],
            "not_final": [
                (k, self.final_states.get(k)) for k in sorted(not_final)[:3]
            ],
        }
        return figures

    def emit_all(self) -> dict[str, int]:
        figures = self.compute()
        context = dict(self.context)
        if self.snapshots:
            context["phases_at_kill"] = [dict(s.phases) for s in self.snapshots]
        for name, value in figures.items():
            unit = "ms" if name.endswith("_ms") else "tasks"
            self.lines.append(emit(name, value, unit=unit, scenario=self.scenario, **context))
        return figures

    def assert_promise(self, figures: Mapping[str, int]) -> None:
        """Lost, missing, doubled outside the window, reported failed, ran twice, not final:
        all 0 (doubled inside the window is bounded by the callbacks in flight)."""
        zero = [
            "tasks_lost",
            "callbacks_missing",
            "callbacks_doubled_outside_window",
            "reported_failed",
            "wrong_output",
            "not_final",
            "scripts_run_twice",
            "scripts_never_run",
            "ran_but_reported_failed",
        ]
        broken = {name: figures[name] for name in zero if figures.get(name)}
        assert figures["tasks_acknowledged"] > 0, "nothing was acknowledged"
        assert not broken, (
            f"{self.scenario} {self.context}: {broken} (examples: {self.examples})"
        )
