"""The world's queries the console is built on, on SQLite and PostgreSQL: counts per state and
result, the search over label and id, narrow deep pages, labels, sub-plan counts, a plan's
output chunks, the registered worlds."""

from __future__ import annotations

import pytest

from dynflow import World
from tests.support.console_actions import AlwaysFails, Checkout, Release
from tests.support.waiting import wait_plan_state


async def test_counts_search_and_pages(world: World) -> None:
    releases = []
    for app in ("billing", "inventory"):
        done = await world.trigger(Release, app=app, hosts=["a"])
        await done.wait(10)
        releases.append(done.id)
    checkout = await world.trigger(Checkout, repository="r")
    await checkout.wait(10)
    failing = await world.trigger(AlwaysFails, path="/x")
    await wait_plan_state(world, failing.id, "paused")
    planned = await world.plan(Checkout, repository="later")

    counts = await world.plan_counts(None, ("state", "result"))
    assert counts == {
        ("stopped", "success"): 3,
        ("paused", "error"): 1,
        ("planned", "pending"): 1,
    }
    assert await world.plan_counts({"state": ["stopped", "paused"]}) == {
        ("stopped",): 3,
        ("paused",): 1,
    }
    with pytest.raises(ValueError):
        await world.plan_counts(None, ("input",))

    # Search: label contains (any case), or id prefix; % and _ are literal.
    release_label = {"search": "console_actions.RELEASE"}
    assert await world.plan_counts(release_label) == {("stopped",): 2}
    by_id = await world.find_plans(filters={"search": releases[1][:7]})
    assert [p.id for p in by_id] == [releases[1]]
    assert await world.find_plans(filters={"search": "%"}) == []
    assert await world.find_plans(filters={"search": "console_actions_"}) == []

    # Narrow pages: the same plans as the plain query, in the same order when there are no
    # ties, on every page.
    for order, desc in (("started_at", True), ("label", False), ("state", True)):
        plain = [p.id for p in await world.find_plans(order_by=order, desc=desc)]
        paged = []
        for page in range(3):
            plans = await world.find_plans(
                order_by=order, desc=desc, page=page, per_page=2, narrow=True
            )
            paged += [p.id for p in plans]
        assert sorted(paged) == sorted(plain)
        if order == "started_at":
            assert paged == plain
    narrow = await world.find_plans(
        filters={"search": "release", "state": "stopped"}, page=0, per_page=5, narrow=True
    )
    assert {p.id for p in narrow} == set(releases)
    assert (await world.find_plans(filters={"uuid": planned.id}, per_page=1, narrow=True))[
        0
    ].state == "planned"

    nobody = {"caller_execution_plan_id": releases[0], "caller_action_id": 1}
    assert await world.find_plans(filters=nobody, page=0, per_page=5, narrow=True) == []

    labels = await world.plan_labels()
    assert labels == sorted(
        {
            "tests.support.console_actions.AlwaysFails",
            "tests.support.console_actions.Checkout",
            "tests.support.console_actions.Release",
        }
    )


async def test_output_chunks_of_a_plan_and_worlds(world: World) -> None:
    done = await world.trigger(Release, app="web", hosts=["a", "b"])
    plan = await done.wait(10)
    chunks = await world.plan_output_chunks(plan.id)
    assert [c["chunk"] for c in chunks] == [{"fetched": "origin/main", "objects": 1243}]
    checkout_action = chunks[0]["action_id"]
    assert plan.actions[checkout_action].name().endswith(".Checkout")
    assert await world.plan_output_chunks(plan.id, after_id=chunks[-1]["id"]) == []
    assert await world.sub_plan_counts(plan.id) == {}

    worlds = await world.worlds()
    me = next(w for w in worlds if w["id"] == world.id)
    assert me["current"] and me["alive"] and me["active"]
    assert me["meta"]["queues"] == {"default": {"pool_size": 5}}
    assert me["executing"] == 0
    assert await world.invalidate_dead_worlds() == 0
