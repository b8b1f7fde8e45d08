"""Engine process of the singleton crash test (``tests/dynflow/test_singleton.py``).

    singleton_worker.py --db URL --dir DIR

Triggers ``SlowSingleton`` (its run blocks), waits until its run step is running, writes
``DIR/ready.json`` (``{"pid", "world_id", "plan_id"}``) and idles until it is killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dynflow import World  # noqa: E402
from tests.support.singleton_actions import SlowSingleton  # noqa: E402

READY_FILE = "ready.json"
IDLE_LIMIT = 60.0


async def start(db: str, workdir: Path) -> None:
    marker = workdir / "running.marker"
    async with World(db, cleaner_interval=None) as world:
        triggered = await world.trigger(SlowSingleton, marker=str(marker))
        assert triggered.triggered, triggered
        deadline = time.monotonic() + 20
        while not marker.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the singleton step did not start")
            await asyncio.sleep(0.02)
        tmp = workdir / "ready.tmp"
        tmp.write_text(
            json.dumps({"pid": os.getpid(), "world_id": world.id, "plan_id": triggered.id})
        )
        os.replace(tmp, workdir / READY_FILE)
        print("ready", flush=True)
        await asyncio.sleep(IDLE_LIMIT)  # until SIGKILL
        print("not killed in time; giving up", flush=True)
        os._exit(3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", required=True)
    parser.add_argument("--dir", required=True, type=Path)
    args = parser.parse_args()
    asyncio.run(start(args.db, args.dir))


if __name__ == "__main__":
    main()
