"""Driving a plan of ``engine_actions`` nodes from outside, as its users would.

:func:`drive` sends each suspended ``event`` step events until it finishes and calls
``world.cancel`` when a ``cancel`` step waits (``eager``: also while they run, so the engine
queues them), until the plan's execution ends. Shared by the
property tests and the SIGKILL worker.
"""

from __future__ import annotations

import asyncio
from typing import Any

from dynflow import EventRejected, World

from .engine_model import Shape

POLL = 0.005  # seconds between two looks at the store
EVENT_TIMEOUT = 10.0


async def _send(world: World, plan_id: str, step_id: int, n: int) -> None:
    try:
        await asyncio.wait_for(world.event(plan_id, step_id, {"n": n}), EVENT_TIMEOUT)
    except EventRejected:
        pass  # the step moved on meanwhile (it was re-run, or the plan ended)


async def drive_once(world: World, plan_id: str, shape: Shape, eager: bool = False) -> None:
    """Look at the stored plan once: events to waiting event steps, cancel for cancel steps;
    ``eager``: also to steps that are running (the engine queues the events)."""
    plan = await world.load_plan(plan_id)
    if plan is None:
        return
    sends = []
    cancel = False
    wanted = ("suspended", "running") if eager else ("suspended",)
    for node_id, step_id in shape.run_step.items():
        if step_id is None or plan.steps[step_id].state not in wanted:
            continue
        behaviour = shape.nodes[node_id].get("behaviour")
        if behaviour == "event":
            sends.append(_send(world, plan_id, step_id, len(sends)))
        elif behaviour == "cancel":
            cancel = True
    if cancel and world.is_running(plan_id):
        await world.cancel(plan_id)
    if sends:
        await asyncio.gather(*sends)


async def drive(
    world: World,
    plan_id: str,
    shape: Shape,
    finished: asyncio.Future[Any] | None = None,
    eager: bool = False,
) -> None:
    """Drive until ``finished`` resolves or (without it) the stored plan is ``stopped`` or
    ``paused`` and this world does not execute it."""
    while True:
        if finished is not None:
            if finished.done():
                return
        elif not world.is_running(plan_id):
            statuses = await world.plan_statuses({"uuid": [plan_id]})
            if statuses.get(plan_id, {}).get("state") in ("stopped", "paused"):
                return
        await drive_once(world, plan_id, shape, eager)
        if finished is not None:
            await asyncio.wait([finished], timeout=POLL)
        else:
            await asyncio.sleep(POLL)
