#!/usr/bin/env python
"""Console benchmark: the plan list of the real ``smart-proxy-dynflow-core`` over 100,000 plans.

Prints one JSON line per figure, e.g.::

    {"figure": "console_list_ms_p95", "value": 123.4, "unit": "ms", "store": "sqlite-file",
     "plans": 100000, "target": 300, "requests": 50}

The database is filled directly (bulk inserts of plan rows through SQLAlchemy: a fixture, not
the engine's write path) with ``--plans`` (100,000) plans of a realistic mix: mostly stopped
(success, some warning, error, cancelled), some running, paused, pending; 30 labels; start
times spread over 30 days. Then the service starts (plain HTTP on 127.0.0.1, ``console_http``
on, log level ERROR) and one client asks for each page ``--requests`` (50) times in a row,
after a warm-up. Figures (p50 and p95 of the time to the whole HTML page, each):

* ``console_list_ms``: ``GET /console``: every plan, newest first, page 0 (20 per page), with
  the counts per state and result at the top and the label choices;
* ``console_list_deep_ms``: the same list's last page (an offset of ~``plans``);
* ``console_list_filtered_ms``: ``?state=stopped&result=error`` (~6 % of the plans), page 0;
* ``console_list_search_ms``: ``?q=runscript`` (label contains, any case, or id prefix);
* ``console_list_search_deep_ms``: the search's last page.

Target: p95 < 300 ms for each. ``--store postgresql`` runs the same on a throw-away database
``dynflow_consolebench_<hex>`` (127.0.0.1:5432, user postgres, trust; dropped at the end;
``{"figure": ..., "skipped": ...}`` if the server is unreachable); ``--store all`` both.

Usage: ``bench/console.py [--store sqlite-file|postgresql|all] [--plans N] [--requests N]
[--quick] [--timeout S]``
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import benchlib  # bench/benchlib.py, next to this script
import httpx
import pgdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

STORE_SQLITE = "sqlite-file"
STORE_PG = "postgresql"
STORES = (STORE_SQLITE, STORE_PG)
PG_PREFIX = "dynflow_consolebench_"
TARGET_MS = 300.0
PAGES = {
    "console_list_ms": ("", False),
    "console_list_deep_ms": ("", True),
    "console_list_filtered_ms": ("state=stopped&result=error", False),
    "console_list_search_ms": ("q=runscript", False),
    "console_list_search_deep_ms": ("q=runscript", True),
}
FIGURES = [f"{name}_{q}" for name in PAGES for q in ("p50", "p95")]
UNITS = dict.fromkeys(FIGURES, "ms")
TARGETS = {figure: TARGET_MS for figure in FIGURES if figure.endswith("_p95")}
PER_PAGE = 20

LABELS = [
    "Actions::RemoteExecution::RunHostJob",
    "Actions::RemoteExecution::RunHostsJob",
    "Proxy::RemoteExecution::Ssh::Actions::RunScript",
    "ForemanRemoteExecutionCore::Actions::RunScript",
    "Actions::Katello::Host::Update",
    "Actions::Katello::Host::UploadPackageProfile",
    "Actions::Katello::Repository::Sync",
    "Actions::Katello::ContentView::Publish",
    "Actions::Katello::ContentView::Promote",
    "Actions::Katello::CapsuleContent::Sync",
    "Actions::Pulp3::Repository::Sync",
    "Actions::Candlepin::ListenOnCandlepinEvents",
    "Actions::Insights::EmailNotifications",
    "Actions::Foreman::Host::Destroy",
    "Actions::Foreman::Host::ImportFacts",
    "Actions::ForemanLeapp::PreupgradeJob",
    "Actions::Ansible::RunPlaybook",
    "Proxy::Ansible::Actions::RunPlaybook",
    "smart_proxy_dynflow.launcher.BatchAction",
    "smart_proxy_dynflow.launcher.SingleRunnerBatchAction",
    "smart_proxy_dynflow.callback.CallbackAction",
    "smart_proxy_remote_execution_ssh.actions.ScriptRunnerAction",
    "Actions::ForemanOpenscap::Oval::Sync",
    "Actions::BulkAction",
    "Actions::Katello::OrphanCleanup::RemoveOrphans",
    "Actions::Katello::Applicability::Hosts::BulkGenerate",
    "Actions::RemoteExecution::RunProxyCommand",
    "Actions::ForemanVirtWhoConfigure::Config::Save",
    "Actions::Middleware::KeepCurrentUser",
    "Actions::Katello::EventQueue::Monitor",
]


def figure_line(figure: str, value: float, store: str, **extra: Any) -> dict[str, Any]:
    return benchlib.figure_line(figure, value, store, UNITS, TARGETS, **extra)


# ---- the fixture --------------------------------------------------------------------------------
def plan_rows(count: int, seed: int = 42) -> list[dict[str, Any]]:
    """``count`` plan rows of the mix described in the module docstring."""
    from dynflow.persistence.schema import execution_plans

    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    columns = {c.name for c in execution_plans.columns}
    rows = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.92:
            state = "stopped"
            result = rng.choices(("success", "warning", "error", "cancelled"), (85, 5, 7, 3))[0]
        elif roll < 0.95:
            state, result = "running", "pending"
        elif roll < 0.97:
            state, result = "paused", "error"
        else:  # (not "planned": the service would execute those at its start)
            state, result = "pending", "pending"
        # (paused plans within 5 days: the cleaner deletes those paused for over a week)
        days = 5 if state == "paused" else 30
        started = now - dt.timedelta(seconds=rng.uniform(0, days * 86400))
        real = rng.expovariate(1 / 20.0)
        ended = started + dt.timedelta(seconds=real) if state == "stopped" else None
        row = {
            "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "state": state,
            "result": result,
            "started_at": started,
            "ended_at": ended,
            "real_time": real if ended else 0.0,
            "execution_time": real / 10 if ended else None,
            "label": rng.choice(LABELS),
            "class": "Dynflow::ExecutionPlan",
            "run_flow": json.dumps(["S", 2, 4]),
            "finalize_flow": json.dumps(["S"]),
            "execution_history": json.dumps(
                [{"time": int(started.timestamp()), "name": "start execution", "world_id": None}]
            ),
            "step_ids": json.dumps([1, 2, 3, 4]),
            "root_plan_step_id": 1,
        }
        rows.append({k: v for k, v in row.items() if k in columns})
    return rows


async def fill(url: str, count: int) -> float:
    """Create the schema (the engine's migrations) and insert ``count`` plans; seconds taken."""
    from sqlalchemy import insert, text
    from sqlalchemy.ext.asyncio import create_async_engine

    from dynflow.persistence.schema import execution_plans
    from dynflow.persistence.store import Store

    store = Store(url)
    await store.migrate()
    await store.engine.dispose()
    begin = time.perf_counter()
    engine = create_async_engine(url)
    rows = plan_rows(count)
    async with engine.begin() as conn:
        for start in range(0, len(rows), 5000):
            await conn.execute(insert(execution_plans), rows[start : start + 5000])
    if url.startswith("postgresql"):
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE dynflow_execution_plans"))
    await engine.dispose()
    return time.perf_counter() - begin


# ---- the service --------------------------------------------------------------------------------
class Service(benchlib.ServiceProcess):
    name = "core"

    def __init__(self, workdir: Path, database: str) -> None:
        super().__init__(workdir)
        self.config_dir = workdir / "config"
        (self.config_dir / "settings.d").mkdir(parents=True)
        settings = {
            "listen": "127.0.0.1",
            "port": self.port,
            "database": database,
            "console_http": True,
            # Keep the fixture: the cleaner would delete plans stopped over 30 min ago.
            "execution_plan_cleaner_age": 400 * 86400,
            "log_file": str(self.log_file),
            "log_level": "ERROR",
        }
        (self.config_dir / "settings.yml").write_text(benchlib.yaml_settings(settings))

    def command(self) -> list[str]:
        return [*benchlib.core_command(), "-1", "-c", str(self.config_dir)]


def percentile(ordered: list[float], q: float) -> float:
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def measure(url: str, store: str, plans: int, requests: int, timeout: float) -> None:
    with httpx.Client(base_url=url, timeout=timeout) as client:
        for name, (query, deep) in PAGES.items():
            path = "/console" + (f"?{query}" if query else "")
            if deep:
                first = client.get(path)
                pages = int(_pages(first.text))
                sep = "&" if query else "?"
                path += f"{sep}page={pages - 1}"
            for _ in range(3):  # warm-up
                checked(client.get(path), path)
            times = []
            for _ in range(requests):
                begin = time.perf_counter()
                checked(client.get(path), path)
                times.append((time.perf_counter() - begin) * 1000)
            times.sort()
            extra = {"plans": plans, "requests": requests, "path": path}
            benchlib.emit(figure_line(f"{name}_p50", statistics.median(times), store, **extra))
            benchlib.emit(figure_line(f"{name}_p95", percentile(times, 0.95), store, **extra))


def _pages(page: str) -> str:
    import re

    match = re.search(r"Page <b>\d+</b> of ([\d,]+)", page)
    if not match:
        raise RuntimeError("the list page has no page count")
    return match.group(1).replace(",", "")


def checked(response: httpx.Response, path: str) -> httpx.Response:
    if response.status_code != 200 or 'id="plans"' not in response.text:
        raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:200]}")
    return response


def run_store(store: str, plans: int, requests: int, timeout: float) -> None:
    def failed(exc: BaseException) -> None:
        for figure in FIGURES:
            benchlib.emit({"figure": figure, "store": store, "error": str(exc)})

    database = None
    with tempfile.TemporaryDirectory(prefix="console-bench-") as tmp:
        workdir = Path(tmp)
        try:
            if store == STORE_SQLITE:
                path = workdir / "dynflow.sqlite"
                url = f"sqlite+aiosqlite:///{path}"
                setting = str(path)
            else:
                try:
                    database = pgdb.create(PG_PREFIX)
                except OSError as exc:
                    for figure in FIGURES:
                        benchlib.emit({"figure": figure, "store": store, "skipped": str(exc)})
                    return
                url = setting = pgdb.url(database)
            seconds = asyncio.run(fill(url, plans))
            print(f"# {store}: {plans} plans inserted in {seconds:.1f} s", file=sys.stderr)
            service = Service(workdir, setting)
            service.start()
            try:
                measure(service.url, store, plans, requests, timeout)
            finally:
                service.stop()
        except Exception as exc:  # noqa: BLE001 - reported as figure lines
            failed(exc)
        finally:
            if database is not None:
                pgdb.drop(database)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=[*STORES, "all"], default=STORE_SQLITE)
    parser.add_argument("--plans", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="2,000 plans, 10 requests")
    parser.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")
    args = parser.parse_args(argv)
    plans, requests = args.plans, args.requests
    if args.quick:
        plans, requests = 2000, 10
    stores = STORES if args.store == "all" else (args.store,)
    for store in stores:
        run_store(store, plans, requests, args.timeout)


if __name__ == "__main__":
    main()
