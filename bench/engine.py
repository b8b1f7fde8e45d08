#!/usr/bin/env python
"""Engine benchmark: throughput, event round trips, transactions per plan, memory.

Prints one JSON line per figure, e.g.::

    {"figure": "trivial_plans_per_s", "value": 1234.5, "unit": "plans/s",
     "store": "sqlite-file", "n": 5000, "pool_size": 5}

Figures (each on a fresh SQLite file and on a fresh PostgreSQL database):

* ``trivial_plans_per_s``: N one-step plans (a sync ``run`` setting an output key), all
  triggered at once; time from the first trigger until all finished;
* ``transactions_per_trivial_plan``: committed transactions / N during that run;
* ``transactions_per_trivial_plan_sequential`` (and ``trivial_plan_latency_ms_sequential``):
  the same plans triggered one at a time, each awaited;
* ``event_round_trips_per_s``: N plans suspended once (not timed), then all events sent
  concurrently; time until all plans finished;
* ``peak_rss_mb_10k_suspended``: process RSS with N (10,000) plans suspended at once; the line
  also carries ``rss_before_mb`` and ``rss_settled_mb``.

Every figure runs in its own child process (so the memory figure is not polluted by the others
and a hang only costs that figure); a child that fails or hangs yields
``{"figure": ..., "error": ...}``. PostgreSQL: database ``dynflow_bench_<hex>`` on
127.0.0.1:5432 (user postgres, trust auth), created with asyncpg and dropped at the end; if the
server is unreachable the PostgreSQL figures are printed as ``{"figure": ..., "skipped": ...}``.

Usage: ``bench/engine.py [--store sqlite-file|postgresql|all] [--n N] [--quick]
[--profile DIR]`` (``--profile`` writes a cProfile ``.pstats`` per child into DIR).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(1, str(ROOT / "src"))

import pgdb  # noqa: E402  (bench/pgdb.py, next to this script)

from dynflow import Action, World  # noqa: E402

STORE_SQLITE = "sqlite-file"
STORE_PG = "postgresql"
STORES = (STORE_SQLITE, STORE_PG)

PG_PREFIX = "dynflow_bench_"

POOL_SIZE = 5
WAIT_TIMEOUT = 600.0  # a figure that takes longer than this is broken, not slow


# ---- actions -------------------------------------------------------------------------------
class Trivial(Action):
    def run(self) -> None:
        self.output["ok"] = True


class WaitOnce(Action):
    """Suspends on its first run; any event finishes it."""

    def run(self, event: Any = None) -> None:
        if event is None:
            self.suspend()
        self.output["event"] = event


# ---- figures (child side) -----------------------------------------------------------------------
@dataclass
class Figures:
    """N per figure; ``--n`` overrides the trivial-plan N, ``--quick`` shrinks all of them."""

    trivial: int = 5000
    events: int = 2000
    sequential: int = 200
    suspended: int = 10_000

    @classmethod
    def quick(cls) -> Figures:
        return cls(trivial=200, events=100, sequential=20, suspended=500)


FIGURE_UNITS = {
    "trivial_plans_per_s": "plans/s",
    "transactions_per_trivial_plan": "transactions/plan",
    "transactions_per_trivial_plan_sequential": "transactions/plan",
    "trivial_plan_latency_ms_sequential": "ms",
    "event_round_trips_per_s": "events/s",
    "peak_rss_mb_10k_suspended": "MB",
}
# which child produces which figures
CHILDREN: dict[str, list[str]] = {
    "trivial": ["trivial_plans_per_s", "transactions_per_trivial_plan"],
    "sequential": [
        "transactions_per_trivial_plan_sequential", "trivial_plan_latency_ms_sequential",
    ],
    "events": ["event_round_trips_per_s"],
    "suspended": ["peak_rss_mb_10k_suspended"],
}


def emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


def figure_line(figure: str, value: float, store: str, n: int, **extra: Any) -> dict[str, Any]:
    return {
        "figure": figure,
        "value": round(value, 3),
        "unit": FIGURE_UNITS[figure],
        "store": store,
        "n": n,
        "pool_size": POOL_SIZE,
        **extra,
    }


def new_world(url: str) -> World:
    return World(url, pool_size=POOL_SIZE, cleaner_interval=None, termination_timeout=60)


async def count_steps(world: World, state: str) -> int:
    from sqlalchemy import func, select

    from dynflow.persistence.schema import steps

    query = select(func.count()).select_from(steps).where(steps.c.state == state)
    async with world.store.engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def check_results(world: World, n: int, what: str) -> None:
    ok = await world.count_plans({"state": "stopped", "result": "success"})
    if ok != n:
        raise RuntimeError(f"{what}: {ok} of {n} plans ended stopped/success")


async def trivial(url: str, store: str, n: int) -> list[dict[str, Any]]:
    async with new_world(url) as world:
        writer = world.store.writer
        before = writer.transactions
        started = time.perf_counter()
        triggered = await asyncio.gather(*(world.trigger(Trivial) for _ in range(n)))
        await asyncio.wait_for(asyncio.gather(*(t.finished for t in triggered)), WAIT_TIMEOUT)
        elapsed = time.perf_counter() - started
        transactions = writer.transactions - before
        await check_results(world, n, "trivial")
    return [
        figure_line("trivial_plans_per_s", n / elapsed, store, n, seconds=round(elapsed, 3)),
        figure_line(
            "transactions_per_trivial_plan", transactions / n, store, n,
            transactions=transactions,
        ),
    ]


async def sequential(url: str, store: str, n: int) -> list[dict[str, Any]]:
    async with new_world(url) as world:
        writer = world.store.writer
        before = writer.transactions
        started = time.perf_counter()
        for _ in range(n):
            t = await world.trigger(Trivial)
            await t.wait(WAIT_TIMEOUT)
        elapsed = time.perf_counter() - started
        transactions = writer.transactions - before
        await check_results(world, n, "sequential")
    return [
        figure_line(
            "transactions_per_trivial_plan_sequential", transactions / n, store, n,
            transactions=transactions,
        ),
        figure_line("trivial_plan_latency_ms_sequential", elapsed / n * 1000, store, n),
    ]


async def trigger_suspended(world: World, n: int) -> tuple[list[Any], int]:
    """Trigger n WaitOnce plans and wait until all are suspended; returns them and the step id."""
    triggered = await asyncio.gather(*(world.trigger(WaitOnce) for _ in range(n)))

    async def all_suspended() -> bool:
        return await count_steps(world, "suspended") >= n

    await wait_until(all_suspended, WAIT_TIMEOUT, f"{n} plans to suspend")
    plan = await world.load_plan(triggered[0].id)
    assert plan is not None
    step_id = next(s.id for s in plan.run_steps())
    return triggered, step_id


async def events(url: str, store: str, n: int) -> list[dict[str, Any]]:
    async with new_world(url) as world:
        triggered, step_id = await trigger_suspended(world, n)
        writer = world.store.writer
        before = writer.transactions
        started = time.perf_counter()
        await asyncio.wait_for(
            asyncio.gather(*(world.event(t.id, step_id, "go") for t in triggered)), WAIT_TIMEOUT
        )
        await asyncio.wait_for(asyncio.gather(*(t.finished for t in triggered)), WAIT_TIMEOUT)
        elapsed = time.perf_counter() - started
        transactions = writer.transactions - before
        await check_results(world, n, "events")
    return [
        figure_line(
            "event_round_trips_per_s", n / elapsed, store, n,
            seconds=round(elapsed, 3), transactions_per_event=round(transactions / n, 3),
        )
    ]


def rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / (1024 * 1024)


async def suspended(url: str, store: str, n: int) -> list[dict[str, Any]]:
    peak = 0.0

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_mb())
            await asyncio.sleep(0.02)

    async with new_world(url) as world:
        await asyncio.sleep(0.1)
        before = rss_mb()
        sampler = asyncio.create_task(sample())
        started = time.perf_counter()
        triggered, _ = await trigger_suspended(world, n)
        elapsed = time.perf_counter() - started
        settled = rss_mb()
        sampler.cancel()
        peak = max(peak, settled)
        running = sum(1 for t in triggered if world.is_running(t.id))
        if running != n:
            raise RuntimeError(f"only {running} of {n} plans are held suspended")
        # stop parks the suspended plans as paused; that is not part of the figure
    return [
        figure_line(
            "peak_rss_mb_10k_suspended", peak, store, n,
            rss_before_mb=round(before, 1), rss_settled_mb=round(settled, 1),
            rss_delta_kb_per_plan=round((settled - before) * 1024 / n, 2),
            seconds_to_suspend_all=round(elapsed, 3),
        )
    ]


CHILD_FUNCS: dict[str, Callable[[str, str, int], Awaitable[list[dict[str, Any]]]]] = {
    "trivial": trivial,
    "sequential": sequential,
    "events": events,
    "suspended": suspended,
}


def run_child(name: str, url: str, store: str, n: int, profile: Path | None) -> None:
    func = CHILD_FUNCS[name]
    if profile is None:
        lines = asyncio.run(func(url, store, n))
    else:
        profiler = cProfile.Profile()
        lines = profiler.runcall(asyncio.run, func(url, store, n))
        profile.mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(str(profile / f"{store}-{name}.pstats"))
    for line in lines:
        emit(line)


# ---- orchestration (parent side) ----------------------------------------------------------------
def child_n(name: str, figures: Figures) -> int:
    return {
        "trivial": figures.trivial,
        "sequential": figures.sequential,
        "events": figures.events,
        "suspended": figures.suspended,
    }[name]


def spawn_child(
    name: str, url: str, store: str, n: int, timeout: float, profile: Path | None
) -> list[dict[str, Any]]:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--child", name, "--url", url,
        "--store", store, "--n", str(n),
    ]
    if profile is not None:
        cmd += ["--profile", str(profile)]
    failed = {"store": store, "n": n, "pool_size": POOL_SIZE}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [
            {"figure": f, "error": f"timed out after {timeout:.0f} s", **failed}
            for f in CHILDREN[name]
        ]
    lines = []
    for raw in proc.stdout.splitlines():
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError:
            continue
    if proc.returncode != 0 or len(lines) != len(CHILDREN[name]):
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return [
            {"figure": f, "error": f"child exited with {proc.returncode}: {tail}", **failed}
            for f in CHILDREN[name]
        ]
    return lines


def run_store(store: str, figures: Figures, timeout: float, profile: Path | None) -> None:
    if store == STORE_SQLITE:
        with tempfile.TemporaryDirectory(prefix="dynflow-bench-") as tmp:
            for index, name in enumerate(CHILDREN):
                url = f"sqlite+aiosqlite:///{tmp}/bench-{index}.db"
                for line in spawn_child(
                    name, url, store, child_n(name, figures), timeout, profile
                ):
                    emit(line)
        return
    try:
        database = pgdb.create(PG_PREFIX)
    except Exception as exc:  # noqa: BLE001 - any failure to reach the server skips PostgreSQL
        reason = f"PostgreSQL at {pgdb.PG_HOST}:{pgdb.PG_PORT} unreachable: {exc!r}"
        for names in CHILDREN.values():
            for figure in names:
                emit({"figure": figure, "skipped": reason, "store": store})
        return
    try:
        url = pgdb.url(database)
        for index, name in enumerate(CHILDREN):
            if index:
                pgdb.truncate_dynflow_tables(database)
            for line in spawn_child(name, url, store, child_n(name, figures), timeout, profile):
                emit(line)
    finally:
        pgdb.drop(database)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Dynflow engine benchmark (JSON lines)")
    parser.add_argument("--store", choices=[*STORES, "all"], default="all")
    parser.add_argument("--n", type=int, default=None, help="N of the trivial-plan figure")
    parser.add_argument("--quick", action="store_true", help="small N: a smoke run")
    parser.add_argument("--timeout", type=float, default=None, help="per child, in seconds")
    parser.add_argument("--profile", type=Path, default=None, help="write cProfile stats here")
    parser.add_argument("--child", choices=list(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        run_child(args.child, args.url, args.store, args.n, args.profile)
        return
    figures = Figures.quick() if args.quick else Figures()
    if args.n is not None:
        figures.trivial = args.n
    timeout = args.timeout or (60.0 if args.quick else 900.0)
    stores = STORES if args.store == "all" else (args.store,)
    for store in stores:
        run_store(store, figures, timeout, args.profile)


if __name__ == "__main__":
    main()
