"""Engine process of the delayed-plan crash test (``tests/dynflow/test_delayed_plans.py``).

    delayed_crash_worker.py --db URL --dir DIR

Starts a world (its delayed executor polls every 50 ms and takes the ``delayed-executor``
lock), delays a ``HangingPlan`` due at once and writes ``DIR/delayed.json`` (plan id, world id,
pid). The delayed executor then plans it; with ``DIR/block`` present the plan method writes
``DIR/planning`` and hangs until the test kills this process with SIGKILL.
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
from tests.support.delayed_actions import HangingPlan  # noqa: E402

IDLE_LIMIT = 60.0


async def main(db: str, workdir: Path) -> None:
    async with World(
        db, cleaner_interval=None, auto_execute=False, delayed_executor_interval=0.05
    ) as world:
        scheduled = await world.delay(HangingPlan, None, dir=str(workdir))
        tmp = workdir / "delayed.tmp"
        tmp.write_text(
            json.dumps({"plan_id": scheduled.id, "world_id": world.id, "pid": os.getpid()})
        )
        os.replace(tmp, workdir / "delayed.json")
        await asyncio.sleep(IDLE_LIMIT)  # the planning hangs long before this ends
        print("not killed in time; giving up", flush=True)
        os._exit(3)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", required=True)
    parser.add_argument("--dir", required=True, type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    asyncio.run(main(args.db, args.dir))
