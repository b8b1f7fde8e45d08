"""Conformance: Dynflow's ``test/world_test.rb`` ("World").

The world registers itself in the database with its meta (hostname, pid, queues); it reports
the state of its queues; it can be terminated and says when that is done. Dynflow's world is
built with a ``slow`` queue of one worker (WorldFactory); ours too (``support_recovery``).

Our records carry a few more keys than Dynflow's (``meta.delayed_executor`` is always present,
``False`` when this world does not run the delayed executor; each queue's status has
``async_running``); the tests check Dynflow's keys and values and tolerate the extra ones.

Not ported: the second half of "#get_execution_status" / "retrieves correct execution items
count" asks the status *of one plan* (``get_execution_status(world_id, plan_id)``) over the
dispatcher; ours reports the queues of the local world only (``execution_status()``), there is
no per-plan or remote variant to express it with.
"""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from dynflow import ExecutionRejected
from tests.dynflow.conformance.support_recovery import Quick, stop_all, world, world_ids


async def registered_meta(w, world_id):
    listed = {entry["id"]: entry for entry in await w.worlds()}
    return dict(listed[world_id]["meta"])


async def test_meta_by_default_informs_about_the_hostname_and_the_pid(db_url):
    """world_test.rb: "World" / "#meta" / "by default informs about the hostname and the pid
    running the world"."""
    w = world(db_url)
    await w.start()
    try:
        meta = await registered_meta(w, w.id)
        assert meta.pop("last_seen")
        assert not meta.pop("delayed_executor", False)  # ours: present, False
        assert meta == {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "queues": {"default": {"pool_size": 5}, "slow": {"pool_size": 1}},
        }
    finally:
        await stop_all(w)


async def test_meta_is_configurable(db_url):
    """world_test.rb: "World" / "#meta" / "is configurable"."""
    plain, custom = world(db_url), world(db_url, meta={"fast": True})
    await plain.start()
    await custom.start()
    try:
        meta = await registered_meta(plain, custom.id)  # as any world of the cluster sees it
        assert meta["fast"] is True
        assert "fast" not in await registered_meta(plain, plain.id)
    finally:
        await stop_all(custom, plain)


async def test_get_execution_status_retrieves_correct_execution_items_count(db_url):
    """world_test.rb: "World" / "#get_execution_status" / "retrieves correct execution items
    count"."""
    w = world(db_url)
    await w.start()
    try:
        status = w.execution_status()
        assert set(status) == {"default", "slow"}
        keys = ("pool_size", "free_workers", "queue_size")
        assert {name: {k: queue[k] for k in keys} for name, queue in status.items()} == {
            "default": {"pool_size": 5, "free_workers": 5, "queue_size": 0},
            "slow": {"pool_size": 1, "free_workers": 1, "queue_size": 0},
        }
    finally:
        await stop_all(w)


async def test_terminate_fires_an_event_after_termination(db_url):
    """world_test.rb: "World" / "#terminate" / "fires an event after termination".

    Dynflow's ``terminate`` returns a future and ``terminated`` is resolved when it is done;
    ours is the ``stop()`` coroutine: when it has returned the world is gone from the
    register and takes no more work."""
    w, observer = world(db_url), world(db_url)
    await w.start()
    await observer.start()
    try:
        done = await (await w.trigger(Quick)).wait(10)
        assert done.state == "stopped"
        stopping = asyncio.ensure_future(w.stop())
        await asyncio.wait_for(stopping, 10)
        assert stopping.done() and stopping.exception() is None
        assert w.id not in await world_ids(observer)
        with pytest.raises(ExecutionRejected):
            await w.trigger(Quick)
    finally:
        await stop_all(observer)
