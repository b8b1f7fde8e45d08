#!/usr/bin/env python
"""Task API benchmark: the real ``smart-proxy-dynflow-core`` process, driven over HTTP.

Prints one JSON line per figure, e.g.::

    {"figure": "status_latency_p99_ms", "value": 12.3, "unit": "ms", "store": "sqlite-file",
     "target": 20, "clients": 50, "requests": 25000, "requests_per_s": 5000.0}

Figures (per store: a fresh SQLite file, a fresh PostgreSQL database):

* ``status_latency_p50_ms`` / ``status_latency_p99_ms``: ``GET /tasks/<id>/status`` of random
  finished plans (each of four actions: three children and the parent) from ``--clients`` (50)
  concurrent clients in a closed loop (each sends its next request when the previous answer
  arrived) for ``--duration`` (5) seconds, after a warm-up. Each client is one keep-alive
  connection spoken by a minimal HTTP/1.1 client (httpx costs ~1 ms of CPU per request, and the
  load generator shares the cores with the service). Target p99 < 20 ms. By Little's law the
  latency is about clients / throughput, so the line carries ``requests_per_s`` and the CPU use
  of the service and of the load generator.
* ``status_running_latency_p50_ms`` / ``_p99_ms``: the same for plans whose runner is still
  running (``Bench::Running``: output stored as chunks, each request asks the runner for fresh
  output). Both are served from the status cache while a plan does not change.
* ``status_in_process_p50_ms``, ``status_relay_p50_ms``, ``relay_added_p50_ms`` (SQLite run
  only): one client asking for the status of finished plans through ``smart-proxy`` with the
  dynflow plugin in-process, and through ``smart-proxy`` relaying ``/dynflow`` to the core;
  the difference is what the relay adds (target < 3 ms).
* ``status_uncached_p50_ms``: the first ``GET /tasks/<id>/status`` of each of the 1,000 batch
  children, one client: the cost of reading a plan from the database (``p99_ms`` too).
* ``batch_1000_planned_s``: ``POST /tasks/launch`` of operation ``bench-batch`` with 1,000
  inputs keyed by fresh UUIDs, until all 1,000 child plans exist (polling ``POST
  /tasks/status`` with the keys). Target < 5 s. The line also carries the launch response time
  and the time until every child stopped.
* ``bulk_status_1000_ms``: ``POST /tasks/status`` with 1,000 existing ids (those children);
  median of several runs. Target < 100 ms.

The service is started as a subprocess (plain HTTP on 127.0.0.1, a free port, log level
ERROR) with the bench-only plugin of ``bench/plugin_dist`` + ``bench/bench_plugin.py``
enabled by ``settings.d/bench.yml``. PostgreSQL: database ``dynflow_apibench_<hex>`` on
127.0.0.1:5432 (user postgres, trust auth), created with asyncpg and dropped at the end; if the
server is unreachable the PostgreSQL figures are printed as ``{"figure": ..., "skipped": ...}``.
A stage that fails or times out yields ``{"figure": ..., "error": ...}`` for its figures.

Usage: ``bench/api.py [--store sqlite-file|postgresql|all] [--quick] [--clients N]
[--duration S] [--timeout S] [--profile DIR]`` (``--profile`` runs the service under cProfile
and writes ``<store>-service.pstats`` into DIR).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib  # bench/benchlib.py, next to this script
import httpx
import pgdb  # bench/pgdb.py, next to this script

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
PLUGIN_DIST = BENCH / "plugin_dist"

STORE_SQLITE = "sqlite-file"
STORE_PG = "postgresql"
STORES = (STORE_SQLITE, STORE_PG)

PG_PREFIX = "dynflow_apibench_"

TRIVIAL = "Bench::Trivial"
FEW_STEPS = "Bench::FewSteps"
RUNNING = "Bench::Running"
BATCH_OPERATION = "bench-batch"
POLL_INTERVAL = 0.02

FIGURE_UNITS = {
    "status_latency_p50_ms": "ms",
    "status_latency_p99_ms": "ms",
    "status_running_latency_p50_ms": "ms",
    "status_running_latency_p99_ms": "ms",
    "batch_1000_planned_s": "s",
    "bulk_status_1000_ms": "ms",
    "status_uncached_p50_ms": "ms",
    "status_in_process_p50_ms": "ms",
    "status_relay_p50_ms": "ms",
    "relay_added_p50_ms": "ms",
}
TARGETS = {
    "status_latency_p99_ms": 20,
    "batch_1000_planned_s": 5,
    "bulk_status_1000_ms": 100,
    "relay_added_p50_ms": 3,
}
STAGES: dict[str, list[str]] = {
    "status": ["status_latency_p50_ms", "status_latency_p99_ms"],
    "status_running": ["status_running_latency_p50_ms", "status_running_latency_p99_ms"],
    "batch": ["batch_1000_planned_s"],
    "bulk": ["bulk_status_1000_ms", "status_uncached_p50_ms"],
    "deployments": ["status_in_process_p50_ms", "status_relay_p50_ms", "relay_added_p50_ms"],
}


@dataclass
class Sizes:
    status_plans: int = 200
    clients: int = 50
    duration: float = 5.0
    warmup: float = 1.0
    batch: int = 1000
    bulk_runs: int = 9
    deployment_requests: int = 2000

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            status_plans=10,
            clients=5,
            duration=0.5,
            warmup=0.2,
            batch=50,
            bulk_runs=3,
            deployment_requests=50,
        )


def raw_connection(url: str) -> benchlib.RawConnection:
    parsed = httpx.URL(url)
    return benchlib.RawConnection(parsed.port or 80, parsed.host)


def figure_line(figure: str, value: float, store: str, **extra: Any) -> dict[str, Any]:
    return benchlib.figure_line(figure, value, store, FIGURE_UNITS, TARGETS, **extra)


# ---- the service process ------------------------------------------------------------------------
class Service(benchlib.ServiceProcess):
    """A service with its own config directory, started as a subprocess.

    ``kind``: ``core`` (``smart-proxy-dynflow-core``), ``proxy`` (``smart-proxy`` with the
    dynflow plugin in-process) or ``relay`` (``smart-proxy`` forwarding ``/dynflow`` to
    ``core_url``). The bench plugin is enabled wherever a core runs.
    """

    def __init__(
        self,
        workdir: Path,
        database: str,
        profile_file: Path | None,
        kind: str = "core",
        core_url: str | None = None,
    ) -> None:
        super().__init__(workdir)
        self.kind = kind
        self.name = kind
        self.config_dir = workdir / f"config-{kind}"
        settings_d = self.config_dir / "settings.d"
        settings_d.mkdir(parents=True)
        log = {"log_file": str(workdir / f"{kind}.log"), "log_level": "ERROR"}
        if kind == "core":
            settings = {"listen": "127.0.0.1", "port": self.port, "database": database, **log}
        else:
            settings = {"http_port": self.port, "bind_host": "127.0.0.1", **log}
            dynflow: dict[str, Any] = {"enabled": True, "database": database}
            if kind == "relay":
                dynflow = {"enabled": True, "external_core": True, "core_url": core_url}
            (settings_d / "dynflow.yml").write_text(benchlib.yaml_settings(dynflow))
        (self.config_dir / "settings.yml").write_text(benchlib.yaml_settings(settings))
        if kind != "relay":
            (settings_d / "bench.yml").write_text(benchlib.yaml_settings({"enabled": True}))
        self.profile_file = profile_file

    @property
    def prefix(self) -> str:
        """Where the task API is: ``/dynflow`` on a Smart Proxy."""
        return "" if self.kind == "core" else "/dynflow"

    def command(self) -> list[str]:
        if self.kind == "core":
            command = benchlib.core_command(self.profile_file)
        else:
            command = benchlib.proxy_command()
        return [*command, *(["-1"] if self.kind == "core" else []), "-c", str(self.config_dir)]

    def environment(self) -> dict[str, str]:
        env = super().environment()
        paths = [str(PLUGIN_DIST), str(BENCH)]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        return env


# ---- client helpers -----------------------------------------------------------------------------
def new_client(url: str, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=url, limits=limits, timeout=120)


async def checked(response: Awaitable[httpx.Response]) -> Any:
    answer = await response
    if answer.status_code != 200:
        raise RuntimeError(
            f"{answer.request.method} {answer.request.url.path}: "
            f"{answer.status_code} {answer.text[:300]}"
        )
    return answer.json()


async def bulk_states(client: httpx.AsyncClient, ids: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = await checked(client.post("/tasks/status", json={"task_ids": ids}))
    return result


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(POLL_INTERVAL)


async def wait_all_stopped(client: httpx.AsyncClient, ids: list[str], timeout: float) -> None:
    async def stopped() -> bool:
        states = await bulk_states(client, ids)
        return len(states) == len(ids) and all(s["state"] == "stopped" for s in states.values())

    await wait_until(stopped, timeout, f"{len(ids)} plans to stop")
    states = await bulk_states(client, ids)
    bad = [i for i, s in states.items() if s["result"] != "success"]
    if bad:
        raise RuntimeError(f"{len(bad)} of {len(ids)} plans did not succeed, e.g. {bad[0]}")


async def wait_all_printing(client: httpx.AsyncClient, ids: list[str], timeout: float) -> None:
    """Every plan running with its runner's output stored."""

    async def printing() -> bool:
        for task_id in ids:
            data = await checked(client.get(f"/tasks/{task_id}/status"))
            output = data["actions"][0].get("output") or {}
            if data["state"] != "running" or len(output.get("result") or []) < 3:
                return False
        return True

    await wait_until(printing, timeout, "runners printing")


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..1)."""
    rank = max(1, int(-(-q * len(ordered) // 1)))  # ceil(q * n), at least 1
    return ordered[min(rank, len(ordered)) - 1]


# ---- stages -------------------------------------------------------------------------------------
def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process (this one by default)."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def stage_status(
    url: str, store: str, sizes: Sizes, timeout: float, service_pid: int, running: bool = False
) -> list[dict[str, Any]]:
    """Finished plans (``running=False``) or plans whose runner is still running."""
    action_class = RUNNING if running else FEW_STEPS
    prefix = "status_running_latency" if running else "status_latency"
    async with new_client(url, 10) as setup:
        launches = [
            setup.post(
                "/tasks/launch",
                json={
                    "operation": "single",
                    "input": {"action_class": action_class, "action_input": {"index": index}},
                },
            )
            for index in range(sizes.status_plans)
        ]
        ids = [r["task_id"] for r in await asyncio.gather(*(checked(r) for r in launches))]
        if running:
            await wait_all_printing(setup, ids, timeout)
        else:
            await wait_all_stopped(setup, ids, timeout)
        sample = await checked(setup.get(f"/tasks/{ids[0]}/status"))
        actions = len(sample["actions"])

    latencies: list[float] = []
    errors = 0

    async def worker(client: benchlib.RawConnection, until: float, record: bool) -> None:
        nonlocal errors
        while time.perf_counter() < until:
            task_id = random.choice(ids)
            started = time.perf_counter()
            status, _ = await client.get(f"/tasks/{task_id}/status")
            elapsed = (time.perf_counter() - started) * 1000
            if status != 200:
                errors += 1
            elif record:
                latencies.append(elapsed)

    # One keep-alive connection per simulated caller, spoken by a minimal HTTP/1.1 client: the
    # load generator shares the two cores with the service, and httpx costs ~1 ms of CPU per
    # request, which would measure the load generator rather than the service.
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(raw_connection(url)) for _ in range(sizes.clients)
        ]
        warm_until = time.perf_counter() + sizes.warmup
        await asyncio.gather(*(worker(client, warm_until, False) for client in clients))
        errors = 0
        service_cpu, client_cpu = cpu_seconds(service_pid), cpu_seconds()
        started = time.perf_counter()
        until = started + sizes.duration
        await asyncio.gather(*(worker(client, until, True) for client in clients))
        elapsed = time.perf_counter() - started
        service_cpu = cpu_seconds(service_pid) - service_cpu
        client_cpu = cpu_seconds() - client_cpu
    if running:
        async with new_client(url, 10) as cleanup:
            await asyncio.gather(*(checked(cleanup.post(f"/tasks/{i}/cancel")) for i in ids))
            await wait_all_stopped(cleanup, ids, timeout)
    if errors or not latencies:
        raise RuntimeError(f"{errors} failed status requests, {len(latencies)} answered")
    latencies.sort()
    extra = {
        "clients": sizes.clients,
        "plans": sizes.status_plans,
        "actions_per_plan": actions,
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "seconds": round(elapsed, 3),
        # CPU use during the measurement, in cores (1.0 = one core busy all the time)
        "service_cpu_cores": round(service_cpu / elapsed, 2),
        "client_cpu_cores": round(client_cpu / elapsed, 2),
        "host_cpus": os.cpu_count(),
    }
    return [
        figure_line(f"{prefix}_p50_ms", statistics.median(latencies), store, **extra),
        figure_line(
            f"{prefix}_p99_ms",
            percentile(latencies, 0.99),
            store,
            max_ms=round(latencies[-1], 3),
            **extra,
        ),
    ]


async def stage_batch(
    url: str, store: str, sizes: Sizes, timeout: float
) -> tuple[list[dict[str, Any]], list[str]]:
    n = sizes.batch
    keys = [str(uuid.uuid4()) for _ in range(n)]
    batch_input = {
        key: {"action_class": TRIVIAL, "action_input": {"index": index}}
        for index, key in enumerate(keys)
    }
    async with new_client(url, 4) as client:
        # warm the connection (and the route) outside the measurement
        await checked(client.get("/tasks/operations"))
        started = time.perf_counter()
        answer = await checked(
            client.post("/tasks/launch", json={"operation": BATCH_OPERATION, "input": batch_input})
        )
        launched = time.perf_counter() - started
        parent = answer.get("parent") or {}
        if parent.get("result") != "success":
            raise RuntimeError(f"batch launch failed: {answer}")
        polls = 0

        async def all_planned() -> bool:
            nonlocal polls
            polls += 1
            return len(await bulk_states(client, keys)) == n

        await wait_until(all_planned, timeout, f"{n} child plans")
        planned = time.perf_counter() - started
        await wait_all_stopped(client, keys, timeout)
        stopped = time.perf_counter() - started
        parent_state = (await bulk_states(client, [parent["task_id"]]))[parent["task_id"]]
    line = figure_line(
        "batch_1000_planned_s",
        planned,
        store,
        n=n,
        launch_response_ms=round(launched * 1000, 1),
        all_children_stopped_s=round(stopped, 3),
        status_polls=polls,
        parent_state=f"{parent_state['state']}/{parent_state['result']}",
    )
    return [line], keys


async def stage_bulk(url: str, store: str, sizes: Sizes, ids: list[str]) -> list[dict[str, Any]]:
    async with new_client(url, 1) as client:
        await bulk_states(client, ids)  # warm-up
        timings = []
        for _ in range(sizes.bulk_runs):
            started = time.perf_counter()
            states = await bulk_states(client, ids)
            timings.append((time.perf_counter() - started) * 1000)
            if len(states) != len(ids):
                raise RuntimeError(f"{len(states)} of {len(ids)} ids known")
        # The first GET of each plan: nothing cached, the plan is read from the database.
        first: list[float] = []
        async with raw_connection(url) as raw:
            for task_id in ids:
                started = time.perf_counter()
                status, _ = await raw.get(f"/tasks/{task_id}/status")
                first.append((time.perf_counter() - started) * 1000)
                if status != 200:
                    raise RuntimeError(f"status of {task_id}: HTTP {status}")
    first.sort()
    return [
        figure_line(
            "bulk_status_1000_ms",
            statistics.median(timings),
            store,
            n=len(ids),
            runs=len(timings),
            min_ms=round(min(timings), 3),
            max_ms=round(max(timings), 3),
        ),
        figure_line(
            "status_uncached_p50_ms",
            statistics.median(first),
            store,
            clients=1,
            requests=len(first),
            p99_ms=round(percentile(first, 0.99), 3),
        ),
    ]


async def sequential_status_ms(url: str, ids: list[str], requests: int) -> list[float]:
    """``requests`` GETs of ``/tasks/<id>/status`` one after the other, each timed in ms."""
    timings: list[float] = []
    async with raw_connection(url) as raw:
        for index in range(requests):
            path = f"{httpx.URL(url).path.rstrip('/')}/tasks/{ids[index % len(ids)]}/status"
            started = time.perf_counter()
            status, _ = await raw.get(path)
            timings.append((time.perf_counter() - started) * 1000)
            if status != 200:
                raise RuntimeError(f"GET {path}: HTTP {status}")
    return sorted(timings)


async def launch_finished(url: str, count: int, timeout: float) -> list[str]:
    async with new_client(url, 10) as client:
        launches = [
            client.post(
                "tasks/launch",
                json={
                    "operation": "single",
                    "input": {"action_class": FEW_STEPS, "action_input": {"index": index}},
                },
            )
            for index in range(count)
        ]
        ids = [r["task_id"] for r in await asyncio.gather(*(checked(r) for r in launches))]

        async def stopped() -> bool:
            states = await checked(client.post("tasks/status", json={"task_ids": ids}))
            return all(states.get(i, {}).get("state") == "stopped" for i in ids)

        await wait_until(stopped, timeout, "plans stopped")
    return ids


async def stage_deployments(
    core: Service, proxy: Service, relay: Service, store: str, sizes: Sizes, timeout: float
) -> list[dict[str, Any]]:
    """Status through the relay versus the dynflow plugin in-process (and the core itself)."""
    core_url = core.url + "/"
    proxy_url = proxy.url + "/dynflow/"
    relay_url = relay.url + "/dynflow/"
    core_ids = await launch_finished(core_url, 50, timeout)
    proxy_ids = await launch_finished(proxy_url, 50, timeout)
    p50: dict[str, float] = {}
    for name, url, ids in (
        ("core", core_url, core_ids),
        ("relay", relay_url, core_ids),
        ("in_process", proxy_url, proxy_ids),
    ):
        await sequential_status_ms(url, ids, 50)  # warm-up
        timings = await sequential_status_ms(url, ids, sizes.deployment_requests)
        p50[name] = statistics.median(timings)
    extra = {
        "requests": sizes.deployment_requests,
        "clients": 1,
        **{f"{name}_p50_ms": round(value, 3) for name, value in p50.items()},
    }
    return [
        figure_line("status_in_process_p50_ms", p50["in_process"], store, **extra),
        figure_line("status_relay_p50_ms", p50["relay"], store, **extra),
        figure_line(
            "relay_added_p50_ms", max(p50["relay"] - p50["in_process"], 0.001), store, **extra
        ),
    ]


async def run_stages(url: str, store: str, sizes: Sizes, timeout: float, service_pid: int) -> None:
    def failed(stage: str, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        for figure in STAGES[stage]:
            benchlib.emit({"figure": figure, "error": reason, "store": store})

    try:
        for line in await asyncio.wait_for(
            stage_status(url, store, sizes, timeout, service_pid), timeout
        ):
            benchlib.emit(line)
    except Exception as exc:  # noqa: BLE001 - reported as an error line
        failed("status", exc)
    try:
        for line in await asyncio.wait_for(
            stage_status(url, store, sizes, timeout, service_pid, running=True), timeout
        ):
            benchlib.emit(line)
    except Exception as exc:  # noqa: BLE001
        failed("status_running", exc)
    ids: list[str] = []
    try:
        lines, ids = await asyncio.wait_for(stage_batch(url, store, sizes, timeout), timeout)
        for line in lines:
            benchlib.emit(line)
    except Exception as exc:  # noqa: BLE001
        failed("batch", exc)
    if not ids:
        failed("bulk", RuntimeError("no batch children to ask for"))
        return
    try:
        for line in await asyncio.wait_for(stage_bulk(url, store, sizes, ids), timeout):
            benchlib.emit(line)
    except Exception as exc:  # noqa: BLE001
        failed("bulk", exc)


def run_async(coro: Awaitable[None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


# ---- PostgreSQL ---------------------------------------------------------------------------------
# ---- orchestration ------------------------------------------------------------------------------
def run_store(store: str, sizes: Sizes, timeout: float, profile: Path | None) -> None:
    database_name: str | None = None
    if store == STORE_PG:
        try:
            database_name = pgdb.create(PG_PREFIX)
        except Exception as exc:  # noqa: BLE001 - any failure to reach the server skips it
            reason = f"PostgreSQL at {pgdb.PG_HOST}:{pgdb.PG_PORT} unreachable: {exc!r}"
            for figures in STAGES.values():
                for figure in figures:
                    benchlib.emit({"figure": figure, "skipped": reason, "store": store})
            return
    try:
        with tempfile.TemporaryDirectory(prefix="dynflow-apibench-") as tmp:
            workdir = Path(tmp)
            if database_name is None:
                database = str(workdir / "dynflow.sqlite")
            else:
                database = pgdb.url(database_name, "postgresql")
            profile_file = None
            if profile is not None:
                profile.mkdir(parents=True, exist_ok=True)
                profile_file = (profile / f"{store}-service.pstats").resolve()
            service = Service(workdir, database, profile_file)
            try:
                service.start()
            except Exception as exc:  # noqa: BLE001
                service.stop()
                for figures in STAGES.values():
                    for figure in figures:
                        benchlib.emit({"figure": figure, "error": str(exc), "store": store})
                return
            try:
                assert service.proc is not None
                run_async(run_stages(service.url, store, sizes, timeout, service.proc.pid))
                if store == STORE_SQLITE:
                    run_deployments(service, workdir, store, sizes, timeout)
            finally:
                service.stop()
    finally:
        if database_name is not None:
            pgdb.drop(database_name)


def run_deployments(core: Service, workdir: Path, store: str, sizes: Sizes, timeout: float) -> None:
    """The Smart Proxy with dynflow in-process, and one relaying to ``core``."""
    proxy = Service(workdir, str(workdir / "proxy.sqlite"), None, kind="proxy")
    relay = Service(workdir, "", None, kind="relay", core_url=core.url)
    try:
        proxy.start()
        relay.start()

        async def stage() -> list[dict[str, Any]]:
            return await asyncio.wait_for(
                stage_deployments(core, proxy, relay, store, sizes, timeout), timeout
            )

        lines: list[dict[str, Any]] = []

        async def collect() -> None:
            lines.extend(await stage())

        run_async(collect())
        for line in lines:
            benchlib.emit(line)
    except Exception as exc:  # noqa: BLE001 - reported as error lines
        for figure in STAGES["deployments"]:
            error = f"{type(exc).__name__}: {exc}"
            benchlib.emit({"figure": figure, "error": error, "store": store})
    finally:
        relay.stop()
        proxy.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Task API benchmark (JSON lines)")
    parser.add_argument("--store", choices=[*STORES, "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--clients", type=int, default=None, help="concurrent status clients")
    parser.add_argument("--duration", type=float, default=None, help="status load, seconds")
    parser.add_argument("--batch", type=int, default=None, help="children of the batch figure")
    parser.add_argument("--timeout", type=float, default=None, help="per stage, in seconds")
    parser.add_argument("--profile", type=Path, default=None, help="cProfile the service here")
    args = parser.parse_args(argv)

    sizes = Sizes.quick() if args.quick else Sizes()
    if args.clients is not None:
        sizes.clients = args.clients
    if args.duration is not None:
        sizes.duration = args.duration
    if args.batch is not None:
        sizes.batch = args.batch
    timeout = args.timeout or (60.0 if args.quick else 600.0)
    stores = STORES if args.store == "all" else (args.store,)
    for store in stores:
        run_store(store, sizes, timeout, args.profile)


if __name__ == "__main__":
    main()
