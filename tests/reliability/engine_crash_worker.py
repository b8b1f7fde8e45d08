"""Engine process of the SIGKILL property test (``test_engine_properties.py``).

Run with the venv's python::

    engine_crash_worker.py --db URL --tree TREE.json --log LOG.jsonl --ready READY.json

It starts a world on ``URL``, triggers the tree's plan (``engine_actions``; the execution log is
fsynced per line), writes ``READY.json`` (``{"plan_id", "pid"}``, atomically) and drives the plan
like the in-process tests do (events to waiting steps, ``world.cancel`` for cancellable ones)
until its execution ends (then it writes ``READY.ended``); it waits for its SIGKILL and never
exits on its own before ``IDLE_LIMIT``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dynflow import World  # noqa: E402
from tests.reliability import engine_actions as ea  # noqa: E402
from tests.reliability.driving import drive  # noqa: E402
from tests.reliability.engine_model import shape_of  # noqa: E402

IDLE_LIMIT = 120.0  # seconds: never outlive a test that died without killing us


def ended_marker(ready: Path) -> Path:
    """Written once the plan's execution ended (before the kill, if it comes late)."""
    return ready.with_suffix(".ended")


async def main_async(db: str, tree_file: Path, log: Path, ready: Path) -> None:
    tree = json.loads(tree_file.read_text())
    world = World(
        db, pool_size=4, cleaner_interval=None, delayed_executor_interval=None,
        heartbeat_interval=3600,
    )
    await world.start()
    triggered = await world.trigger(ea.class_for(tree), *ea.trigger_args(tree, log, fsync=True))
    plan = await world.load_plan(triggered.id)
    assert plan is not None
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(json.dumps({"plan_id": triggered.id, "pid": os.getpid()}))
    os.replace(tmp, ready)
    if triggered.triggered:
        shape = shape_of(plan, tree)
        try:
            await asyncio.wait_for(drive(world, triggered.id, shape, triggered.finished), 60)
        except TimeoutError:
            pass
    ended_marker(ready).write_text("ended")
    await asyncio.sleep(IDLE_LIMIT)  # until SIGKILL
    os._exit(3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", required=True)
    parser.add_argument("--tree", required=True, type=Path)
    parser.add_argument("--log", required=True, type=Path)
    parser.add_argument("--ready", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main_async(args.db, args.tree, args.log, args.ready))


if __name__ == "__main__":
    main()
