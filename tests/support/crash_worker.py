"""Engine process of the crash-recovery test (``tests/dynflow/test_crash_recovery.py``).

Run with the venv's python::

    crash_worker.py start   --db URL --dir DIR [--delay 2]   # then SIGKILL it
    crash_worker.py recover --db URL --dir DIR

``start`` triggers the scenario plans (see ``crash_actions``), waits until each reached the
wanted state (finished / sync step running / suspended for an event / suspended on a timer),
writes ``DIR/ready.json`` (atomically) and then idles until it is killed.

``recover`` starts a world with the default options on the same database (so recovery and
auto-execute run), records what it sees, sends ``{"finish": true}`` to every plan waiting for an
external event, waits until every plan reached an end state, writes ``DIR/recovered.json`` and
stops the world cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dynflow import World  # noqa: E402
from tests.support.crash_actions import (  # noqa: E402
    KIND_DONE,
    KIND_EVENT,
    KIND_SLEEPER,
    KIND_TIMER,
    CrashScenario,
    read_log,
    scenario_steps,
    snapshot_plan,
)

COUNTS = {KIND_DONE: 3, KIND_SLEEPER: 3, KIND_EVENT: 4, KIND_TIMER: 4}
READY_FILE = "ready.json"
RECOVERED_FILE = "recovered.json"
EXEC_LOG = "exec.log"
FINISH_EVENT = {"finish": True}
IDLE_LIMIT = 120.0  # seconds the start mode waits for its SIGKILL


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


async def start(db: str, workdir: Path, delay: float) -> None:
    log = str(workdir / EXEC_LOG)
    # enough threads for the sleeping steps plus everything else
    async with World(db, pool_size=10, cleaner_interval=None) as world:
        plans: dict[str, dict[str, Any]] = {}

        async def trigger(kind: str) -> str:
            triggered = await world.trigger(CrashScenario, kind=kind, log=log, delay=delay)
            assert triggered.triggered, triggered
            plans[triggered.id] = {"kind": kind}
            return triggered.id

        finished = [
            await world.trigger(CrashScenario, kind=KIND_DONE, log=log)
            for _ in range(COUNTS[KIND_DONE])
        ]
        for t in finished:
            plan = await t.wait(15)
            assert (plan.state, plan.result) == ("stopped", "success"), plan
            plans[t.id] = {"kind": KIND_DONE}
        for kind in (KIND_SLEEPER, KIND_EVENT, KIND_TIMER):  # timers last: their clock runs
            for _ in range(COUNTS[kind]):
                await trigger(kind)

        for plan_id, info in plans.items():
            plan = await world.load_plan(plan_id)
            assert plan is not None
            info.update(scenario_steps(plan))

        async def all_ready() -> bool:
            executed = read_log(log)
            for plan_id, info in plans.items():
                plan = await world.load_plan(plan_id)
                assert plan is not None
                main = plan.steps[info["main"]].state
                if info["kind"] == KIND_DONE:
                    ok = plan.state == "stopped"
                elif info["kind"] == KIND_SLEEPER:
                    ok = main == "running" and executed[(plan_id, info["main"], "run")] == 1
                else:
                    ok = main == "suspended"
                if not ok:
                    return False
            return True

        await wait_until(all_ready, 20, "the plans to reach their pre-crash states")
        snapshots = {}
        deliver_at = 0.0
        for plan_id, info in plans.items():
            plan = await world.load_plan(plan_id)
            assert plan is not None
            snapshots[plan_id] = snapshot_plan(plan)
            if info["kind"] == KIND_TIMER:
                action = next(
                    a for a in plan.actions.values() if a.run_step_id == info["main"]
                )
                deliver_at = max(deliver_at, float(action.output["deliver_at"]))
        write_json(
            workdir / READY_FILE,
            {
                "pid": os.getpid(),
                "world_id": world.id,
                "plans": plans,
                "snapshots": snapshots,
                "deliver_at": deliver_at,
                "ready_at": time.time(),
            },
        )
        print("ready", flush=True)
        await asyncio.sleep(IDLE_LIMIT)  # until SIGKILL
        print("not killed in time; giving up", flush=True)
        os._exit(3)  # never outlive a test that died without killing us


async def recover(db: str, workdir: Path) -> None:
    ready = json.loads((workdir / READY_FILE).read_text())
    plans: dict[str, dict[str, Any]] = ready["plans"]
    started = time.time()
    async with World(db) as world:  # default options: auto_recover and auto_execute on
        observed: dict[str, dict[str, Any]] = {}
        for plan_id, info in plans.items():
            plan = await world.load_plan(plan_id)
            assert plan is not None
            observed[plan_id] = {
                "state": plan.state,
                "result": plan.result,
                "main": plan.steps[info["main"]].state,
                "running_here": world.is_running(plan_id),
            }
        waiting = [pid for pid, info in plans.items() if info["kind"] == KIND_EVENT]
        await asyncio.wait_for(
            asyncio.gather(
                *(world.event(pid, plans[pid]["main"], FINISH_EVENT) for pid in waiting)
            ),
            15,
        )

        async def all_ended() -> bool:
            for plan_id in plans:
                plan = await world.load_plan(plan_id)
                if plan is None or plan.state not in ("stopped", "paused"):
                    return False
                if world.is_running(plan_id):
                    return False
            return True

        await wait_until(all_ended, 20, "the plans to end after the restart")
        write_json(
            workdir / RECOVERED_FILE,
            {
                "pid": os.getpid(),
                "world_id": world.id,
                "observed_at_start": observed,
                "started_at": started,
                "ended_at": time.time(),
            },
        )
    print("recovered", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["start", "recover"])
    parser.add_argument("--db", required=True)
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--delay", type=float, default=2.0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if args.mode == "start":
        asyncio.run(start(args.db, args.dir, args.delay))
    else:
        asyncio.run(recover(args.db, args.dir))


if __name__ == "__main__":
    main()
