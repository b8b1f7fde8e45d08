"""Group commit: guards, isolation of a failing write, folding of equal statements."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from dynflow.persistence.store import Store
from dynflow.persistence.writer import Stmt, Write, schedule
from tests.conftest import PG_PORT, _create_database, _drop_database


@pytest.fixture
async def own_pg_database():
    """A PostgreSQL database of the test's own (a world left behind holds no lock of ours)."""
    name = "dynflow_test_writer_" + secrets.token_hex(4)
    await _create_database(name)
    try:
        yield name
    finally:
        await _drop_database(name)


@pytest.fixture
async def store(db_url):
    s = Store(db_url)
    await s.start()
    try:
        yield s
    finally:
        await s.close()


async def test_same_lock_claimed_twice_in_one_batch(store):
    results = await asyncio.gather(
        *[store.acquire_lock("TestLock", "lock-1", f"owner-{i}", {"i": i}) for i in range(5)]
    )
    assert sorted(results) == [False, False, False, False, True]
    records = await store.find_records(cls="TestLock")
    assert len(records) == 1


async def test_failing_write_does_not_sink_the_batch(store):
    good = [store.acquire_lock("TestLock", f"ok-{i}", "me", {}) for i in range(3)]
    bad = store.write("x", [Stmt(store._insert_ignore.__class__, {})])  # not a statement
    results = await asyncio.gather(*good, bad, return_exceptions=True)
    assert results[:3] == [True, True, True]
    assert isinstance(results[3], Exception)
    assert len(await store.find_records(cls="TestLock")) == 3


async def test_guard_miss_skips_rest_of_its_write(store):
    assert await store.acquire_lock("TestLock", "held", "a", {})
    stmts = [
        store.acquire_lock_stmt("TestLock", "held", "b", {}),
        store.acquire_lock_stmt("TestLock", "after", "b", {}),
    ]
    assert await store.write("r", stmts) is False
    assert await store.find_records(cls="TestLock", record_id="after") == []


async def test_a_guard_missing_after_other_statements_undoes_the_whole_write(store):
    """A write is all or nothing: a guard that misses after statements of its write ran rolls
    them back (a second world's stale recovery wrote the plan paused before its guard on the
    dead world's lock missed, while the first world ran it), and the other writes of the batch
    still commit."""
    assert await store.acquire_lock("TestLock", "held", "a", {})
    losing = store.write(
        "r",
        [
            store.acquire_lock_stmt("TestLock", "before", "b", {}),
            store.acquire_lock_stmt("TestLock", "held", "b", {}),
        ],
    )
    other = store.acquire_lock("TestLock", "other", "c", {})
    assert await asyncio.gather(losing, other) == [False, True]
    assert await store.find_records(cls="TestLock", record_id="before") == []
    assert len(await store.find_records(cls="TestLock", record_id="other")) == 1


def test_schedule_keeps_order_per_resource_and_folds_across():
    a, b = object(), object()
    w1 = Write("p1", [Stmt(a, {"n": 1}), Stmt(b, {"n": 2})])
    w2 = Write("p2", [Stmt(a, {"n": 3}), Stmt(b, {"n": 4})])
    w3 = Write("p1", [Stmt(a, {"n": 5})])
    groups = schedule([w1, w2, w3])
    assert [(g.sql is a, [p["n"] for p, _ in g.items]) for g in groups] == [
        (True, [1, 3]),
        (False, [2, 4]),
        (True, [5]),
    ]


@pytest.mark.postgresql
async def test_a_request_write_queued_behind_a_stalled_batch_is_refused_at_once():
    """During an outage the writer retries its batch for the engine; a request's (impatient)
    write that was queued behind that batch, before the outage was known, is refused with
    StoreUnavailable instead of waiting for the database (the API answers 503)."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from dynflow.persistence.health import StoreUnavailable, impatient
    from dynflow.persistence.writer import Writer
    from tests.conftest import PG_PORT
    from tests.support.tcp_forward import TcpForwarder

    forwarder = TcpForwarder(PG_PORT)
    await forwarder.restore()
    engine = create_async_engine(
        f"postgresql+asyncpg://postgres@127.0.0.1:{forwarder.port}/postgres"
    )
    writer = Writer(engine, max_batch=1)  # one write per batch: the request's waits behind
    await writer.start()
    try:
        assert await writer.write(Write("a", [Stmt(text("SELECT 1"), {})]))
        await forwarder.cut()
        engine_write = asyncio.ensure_future(writer.write(Write("a", [Stmt(text("SELECT 1"), {})])))

        async def request_write() -> bool:
            with impatient():
                return await writer.write(Write("b", [Stmt(text("SELECT 2"), {})]))

        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(request_write(), timeout=10)
        assert not engine_write.done()  # the engine's write waits for the database
        await forwarder.restore()
        assert await asyncio.wait_for(engine_write, timeout=20)
    finally:
        await forwarder.cut()
        await writer.close()
        await engine.dispose()


@pytest.mark.postgresql
async def test_a_world_stops_while_the_database_is_down():
    """Stopping during an outage ends (the world's record is left for the next start to
    invalidate) instead of waiting for the database forever."""
    from dynflow import World
    from tests.conftest import PG_PORT
    from tests.support.tcp_forward import TcpForwarder

    forwarder = TcpForwarder(PG_PORT)
    await forwarder.restore()
    world = World(
        f"postgresql+asyncpg://postgres@127.0.0.1:{forwarder.port}/postgres",
        termination_timeout=1.0,
    )
    await world.start()
    try:
        await forwarder.cut()
        await asyncio.wait_for(world.stop(), timeout=15)
    finally:
        await forwarder.cut()


@pytest.mark.postgresql
async def test_a_world_stops_while_the_database_is_down_and_the_cleaner_is_cleaning(
    monkeypatch, own_pg_database
):
    """The cleaner cancelled in the middle of its run releases its lock in a ``finally``: a
    patient write, which used to wait for the database for ever and hold ``World.stop()``
    (the hang of the store-outage API test when one of its checks failed during the outage).
    A stopping world waits an outage out for ``termination_timeout`` at most."""
    from dynflow import World
    from tests.support.tcp_forward import TcpForwarder

    forwarder = TcpForwarder(PG_PORT)
    await forwarder.restore()
    world = World(
        f"postgresql+asyncpg://postgres@127.0.0.1:{forwarder.port}/{own_pg_database}",
        termination_timeout=1.0,
        cleaner_interval=3600.0,
    )
    cleaning = asyncio.Event()

    async def find_old_plans_until_cancelled(*args, **kwargs):
        cleaning.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(world.store, "find_old_plans", find_old_plans_until_cancelled)
    await world.start()
    try:
        await asyncio.wait_for(cleaning.wait(), 10)  # the cleaner holds its lock, inside try
        await forwarder.cut()
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(world.stop(), timeout=15)
        assert asyncio.get_running_loop().time() - started < 10
    finally:
        await forwarder.cut()
