"""The engine demo that ``make run`` starts (``python -m dynflow.demo``, or ``dynflow-demo``).

It opens a world on the durable default database, ``./var/dynflow.db`` relative to the current
directory (SQLite in WAL mode), and walks through four short scenes:

1. a deploy plan: build and test run concurrently, then release consumes their outputs;
2. an approval that suspends and is woken by an event sent from outside;
3. a cancellable remote job that polls itself with planned events until it is cancelled;
4. the number of plans in the database by state (the database accumulates across runs).

It exits 0 after a few seconds. Ctrl-C stops the world cleanly: plans in flight are parked as
``paused`` and the next run resumes (and here: cancels) them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from dynflow import CANCEL, POLL, Action, ExecutionPlan, World
from dynflow import flow as flows
from dynflow.states import PLAN_STATES
from dynflow.world import DEFAULT_DB_URL

DB_URL = DEFAULT_DB_URL
WAIT_SECONDS = 10.0


def say(text: str = "") -> None:
    print(text, flush=True)


def db_path(url: str = DB_URL) -> Path:
    """Where the SQLite file of ``url`` lives, resolved against the current directory."""
    return Path(make_url(url).database or "").resolve()


# ---- the actions --------------------------------------------------------------------------------


class Build(Action):
    """Builds an artifact. ``async def run`` runs on the event loop."""

    async def run(self) -> None:
        await asyncio.sleep(0.1)  # stands in for real work
        artifact = f"{self.input['app']}-{self.input['version']}.tar.gz"
        self.output_chunk(f"packed {artifact}\n", kind="stdout")
        self.output["artifact"] = artifact


class RunTests(Action):
    """Runs the test suite. A plain ``def run`` runs in the queue's thread pool."""

    def run(self) -> None:
        time.sleep(0.1)  # blocking is fine here: this is a worker thread
        self.output_chunk("42 passed\n", kind="stdout")
        self.output.update({"passed": 42, "failed": 0})


class Release(Action):
    """Releases what Build produced, if RunTests found no failure (inputs are references)."""

    def run(self) -> None:
        if self.input["failed_tests"]:
            self.fail(f"{self.input['failed_tests']} tests failed, not releasing")
        self.output["released"] = self.input["artifact"]


class Deploy(Action):
    """Plans ``sequence(concurrence(Build, RunTests), Release)`` and a finalize step."""

    def plan(self, app: str, version: str) -> None:
        with self.sequence():
            with self.concurrence():
                build = self.plan_action(Build, app=app, version=version)
                tests = self.plan_action(RunTests, app=app)
            self.plan_action(
                Release,
                artifact=build.output["artifact"],  # output references: resolved at run time
                failed_tests=tests.output["failed"],
            )
        self.plan_self(app=app, version=version)  # Deploy has no run, only finalize

    async def finalize(self) -> None:
        say(f"    finalize: {self.input['app']} {self.input['version']} is live")


class WaitForApproval(Action):
    """Suspends until an ``{"approved_by": ...}`` event arrives. Cancellable."""

    cancellable = True

    def run(self, event: Any = None) -> None:
        if event is None:  # first run (or re-run after a restart): wait, holding no thread
            self.output["waiting_since"] = time.time()
            self.suspend()
        if event == CANCEL:
            self.fail("approval cancelled")
        if isinstance(event, dict) and "approved_by" in event:
            self.output["approved_by"] = event["approved_by"]
            return
        self.suspend()  # anything else: keep waiting

    def rescue_strategy_for_self(self) -> str:
        return "fail"  # a cancelled approval ends the plan (stopped/error) instead of pausing it


class RemoteJob(Action):
    """Watches a (pretend) remote job: polls itself every 0.1 s with planned events."""

    cancellable = True

    def run(self, event: Any = None) -> None:
        if event is None:
            self.output["polls"] = 0
        elif event == POLL:
            self.output["polls"] += 1
            self.output_chunk(f"poll {self.output['polls']}: still running\n", kind="stdout")
        elif event == CANCEL:
            self.output["cancelled"] = True
            self.fail("cancelled by the user")
        self.plan_event(POLL, 0.1)  # stored, so it survives a restart
        self.suspend()

    def rescue_strategy_for_self(self) -> str:
        return "fail"


# ---- presentation -------------------------------------------------------------------------------


def short_label(class_name: str | None) -> str:
    return (class_name or "?").rsplit(".", 1)[-1]


def short_name(plan: ExecutionPlan, step_id: int) -> str:
    step = plan.steps.get(step_id)
    return short_label(step.action_class if step is not None else None)


def describe_flow(flow: flows.Flow, plan: ExecutionPlan) -> str:
    """``sequence(concurrence(3:Build, 5:RunTests), 7:Release)`` for a run flow."""
    if isinstance(flow, flows.Atom):
        return f"{flow.step_id}:{short_name(plan, flow.step_id)}"
    assert isinstance(flow, flows.Composed)
    kind = "sequence" if isinstance(flow, flows.Sequence) else "concurrence"
    return f"{kind}({', '.join(describe_flow(c, plan) for c in flow.children)})"


def show_hash(plan: ExecutionPlan) -> None:
    """The plan hash as JSON, one key a line."""
    data = plan.to_hash()
    say("    plan hash: {")
    for index, (key, value) in enumerate(data.items()):
        comma = "," if index < len(data) - 1 else ""
        say(f"      {json.dumps(key)}: {json.dumps(value)}{comma}")
    say("    }")


def show_steps(plan: ExecutionPlan) -> None:
    for step in sorted(plan.steps.values(), key=lambda s: s.id):
        error = f"  ({step.error['message']})" if step.error else ""
        say(f"    step {step.id:>2} {step.kind:<13} {short_name(plan, step.id):<16} "
            f"{step.state}{error}")


def show_outputs(plan: ExecutionPlan) -> None:
    for action in sorted(plan.actions.values(), key=lambda a: a.id):
        if action.output:
            say(f"    output of {short_name(plan, action.plan_step_id)}: "
                f"{json.dumps(action.output, sort_keys=True)}")


async def wait_until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        await asyncio.sleep(0.02)


async def load(world: World, plan_id: str) -> ExecutionPlan:
    plan = await world.load_plan(plan_id)
    assert plan is not None, plan_id
    return plan


async def step_is(world: World, plan_id: str, step_id: int, state: str) -> bool:
    return (await load(world, plan_id)).steps[step_id].state == state


# ---- the scenes ---------------------------------------------------------------------------------


async def adopt_leftovers(world: World) -> None:
    """An interrupted run leaves plans paused; the world resumed them at start. Cancel them."""
    leftovers = [
        p for p in await world.find_plans(filters={"state": "running"}) if world.is_running(p.id)
    ]
    if not leftovers:
        return
    say(f"resumed {len(leftovers)} plan(s) left by an interrupted run:")
    for plan in leftovers:
        sent = await world.cancel(plan.id)
        action = "cancelled" if sent else "let it finish"
        say(f"    {plan.id} {short_label(plan.label)}: {action}")

    async def all_ended() -> bool:
        return not any(world.is_running(p.id) for p in leftovers)

    try:
        await wait_until(all_ended, "the resumed plans")
    except TimeoutError:
        say("    (some are still running; they are paused again when the demo stops)")
    say()


async def deploy_scene(world: World) -> None:
    say("== 1. deploy: build and test concurrently, then release using their outputs ==")
    plan = await world.plan(Deploy, "shop", "1.4.2")
    say(f"    planned {plan.id}: state={plan.state}")
    say(f"    run flow:      {describe_flow(plan.run_flow, plan)}")
    say(f"    finalize flow: {describe_flow(plan.finalize_flow, plan)}")
    show_hash(plan)
    done = await asyncio.wait_for(await world.execute(plan.id), WAIT_SECONDS)
    plan = await load(world, done.id)
    show_hash(plan)
    show_steps(plan)
    show_outputs(plan)
    build = next(a for a in plan.actions.values() if isinstance(a, Build))
    chunks = await world.output_chunks(plan.id, build.id)
    say(f"    output chunks of Build: {[c['chunk'] for c in chunks]}")
    say(f"    history: {[h['name'] for h in plan.execution_history]}")
    say(f"deploy: state={plan.state} result={plan.result}")
    say()


async def approval_scene(world: World) -> None:
    say("== 2. approval: a suspended action woken by an event ==")
    triggered = await world.trigger(WaitForApproval, change="shop 1.4.2 to production")
    step_id = (await load(world, triggered.id)).actions[1].run_step_id
    assert step_id is not None
    await wait_until(lambda: step_is(world, triggered.id, step_id, "suspended"), "suspension")
    plan = await load(world, triggered.id)
    say(f"    plan {plan.id}: state={plan.state}, step {step_id} is {plan.steps[step_id].state}")
    say(f"    sending event {{'approved_by': 'alice'}} to step {step_id}")
    await world.event(triggered.id, step_id, {"approved_by": "alice"})
    plan = await load(world, (await triggered.wait(WAIT_SECONDS)).id)
    show_steps(plan)
    show_outputs(plan)
    say(f"approval: state={plan.state} result={plan.result}")
    say()


async def cancel_scene(world: World) -> None:
    say("== 3. cancel: a cancellable remote job, polling itself with planned events ==")
    triggered = await world.trigger(RemoteJob, host="web1.example.com")

    async def polled_twice() -> bool:
        return (await load(world, triggered.id)).actions[1].output.get("polls", 0) >= 2

    await wait_until(polled_twice, "two polls")
    plan = await load(world, triggered.id)
    step = plan.steps[plan.actions[1].run_step_id or 0]
    say(f"    plan {plan.id}: state={plan.state}, step {step.id} is {step.state}, "
        f"polls so far: {plan.actions[1].output['polls']}")
    sent = await world.cancel(triggered.id)
    say(f"    cancel sent to {sent} step(s)")
    plan = await load(world, (await triggered.wait(WAIT_SECONDS)).id)
    show_steps(plan)
    show_outputs(plan)
    say(f"cancel: state={plan.state} result={plan.result}")
    say()


async def counts_scene(world: World) -> None:
    say("== 4. plans in the database by state ==")
    counts = {state: await world.count_plans({"state": state}) for state in PLAN_STATES}
    for state, count in counts.items():
        say(f"    {state:<10} {count}")
    say(f"counts: {' '.join(f'{s}={n}' for s, n in counts.items())} total={sum(counts.values())}")


async def scenes(world: World) -> None:
    await adopt_leftovers(world)
    await deploy_scene(world)
    await approval_scene(world)
    await cancel_scene(world)
    await counts_scene(world)


async def demo() -> int | None:
    """Run the scenes; returns the number of the signal that interrupted them, if one did.

    Ctrl-C (SIGINT) and SIGTERM never interrupt the world's start or stop: during the scenes
    they cancel the scenes, then the world stops as usual and parks the plans in flight.
    """
    loop = asyncio.get_running_loop()
    received: list[int] = []
    current: asyncio.Task[None] | None = None

    def on_signal(signum: int) -> None:
        received.append(signum)
        if current is not None:
            current.cancel()

    handled = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
            handled.append(signum)
        except (NotImplementedError, RuntimeError):  # no loop signal handlers on this platform
            pass
    try:
        say(f"dynflow demo: database {db_path()} (SQLite, WAL mode; plans accumulate across runs)")
        world = World(DB_URL, termination_timeout=5.0)
        await world.start()
        try:
            say(f"world {world.id} started")
            say()
            if not received:
                current = asyncio.create_task(scenes(world))
                try:
                    await current
                except asyncio.CancelledError:
                    if not received:
                        raise
        finally:
            await world.stop()
        say("world stopped")
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
    return received[0] if received else None


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="    [%(levelname)s %(name)s] %(message)s")
    # The failures the demo provokes (the cancel) are printed by the demo itself.
    logging.getLogger("dynflow.action").setLevel(logging.ERROR)
    try:
        interrupted = asyncio.run(demo())
    except KeyboardInterrupt:
        interrupted = signal.SIGINT
    if interrupted is not None:
        say()
        say(f"interrupted ({signal.Signals(interrupted).name}): the world stopped cleanly; "
            "plans in flight were paused and resume on the next run")
        return 128 + interrupted
    say("done")
    return 0


if __name__ == "__main__":
    # Run the classes of the importable module, so plans store ``dynflow.demo.*`` class names
    # (not ``__main__.*``) and a later run (or another process) can load them.
    from dynflow.demo import main as _main

    sys.exit(_main())
