"""Property tests of the engine: random plans end in the documented state (spec dynflow.md).

Hypothesis builds random trees of actions (``engine_actions``): sequences and concurrences of
children planned with ``plan_action``; sync and async runs; failures in plan, run and finalize
(once, or for good); steps that suspend and wait for external events, wake themselves with a
planned event, time out (``Timeouts``) or wait to be cancelled (``Cancellable``); output
references between actions; rescue strategies skip/pause/fail per action; classes with
``rerun_on_recovery``. Each plan runs on a real ``World`` (an SQLite file, and a PostgreSQL
database created for the test run), driven from outside (events, ``world.cancel``,
``world.resume`` of a paused plan), possibly stopped in the middle (a clean ``world.stop``; an
abandoned world, as a crash in this process; a world in a subprocess killed with SIGKILL) and
picked up by another world on the same database.

What is checked (``engine_model``): the plan ends in the ``(state, result)`` and every step in
the state the reference model of the spec predicts (for a restart: from what the store held
after the stop); the stored result is the one derived from the steps; every step's code ran as
often as predicted (no step ran twice, none concurrently with itself; after a crash the log's
earlier entries count); sequences and output references are respected and references resolve
to the referenced output; cancelled steps end; a resumed plan continues; step state changes
follow the state machines; nothing is left behind (planned events, execution locks).

Two sizes: the functions without a marker run in ``make test`` (profile ``engine-fast``: few
examples, ``derandomize``); those marked ``reliability`` (``make reliability``) run the same
properties with the ``engine-long`` profile (hundreds of examples).

Deliberate differences from the original recorded here: none of the properties needs one; the
places where our engine fixes a QUIRK of the original are outside what these trees do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from dynflow import World
from dynflow.executor import EXECUTION_LOCK
from tests.conftest import _create_database, _drop_database, _run_async

from . import engine_actions as ea
from . import engine_model as em
from .driving import drive
from .engine_crash_worker import ended_marker

T = TypeVar("T")

BEHAVIOURS = ("ok", "fail", "event", "self_event", "timeout", "cancel")
RESUMES = 2  # a paused plan is resumed at most this often (by "a human")
PLAN_TIMEOUT = 30.0  # seconds a plan may take to end once driven
WORKER = Path(__file__).with_name("engine_crash_worker.py")

_HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile(
    "engine-fast",
    max_examples=10,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=_HEALTH,
    print_blob=True,
)
settings.register_profile(
    "engine-long",
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=_HEALTH,
    print_blob=True,
)
FAST = settings.get_profile("engine-fast")
LONG = settings.get_profile("engine-long")


# ---- strategies ----------------------------------------------------------------------------------
@st.composite
def trees(
    draw: st.DrawFn,
    *,
    max_nodes: int = 8,
    behaviours: tuple[str, ...] = BEHAVIOURS,
    plan_failures: bool = True,
    rerun: bool = False,
    stored_timers: bool = False,
) -> dict[str, Any]:
    """A random tree of node specs (see ``engine_actions``), ids in pre-order.

    ``stored_timers``: some self-waking and timing-out steps do not plan their event again when
    re-entered after a restart (only for clean stops: after a crash in the middle of handling
    its event such a step would wait for good, by its own fault)."""
    budget = [max_nodes]

    def common(node: dict[str, Any]) -> dict[str, Any]:
        node["finalize"] = draw(st.booleans())
        if node["finalize"]:
            node["fail_finalize"] = draw(st.sampled_from([0, 0, 0, 1, 99]))
        node["rescue"] = draw(st.sampled_from(["pause", "skip", "fail"]))
        node["rerun"] = draw(st.booleans()) if rerun else False
        return node

    def leaf() -> dict[str, Any]:
        node: dict[str, Any] = {
            "kind": "leaf",
            "run": draw(st.sampled_from(["sync", "async"])),
            "behaviour": draw(st.sampled_from(behaviours)),  # "ok" is the shrink target
            "sleep": draw(st.sampled_from([0.0, 0.0, 0.002, 0.01, 0.02])),
        }
        if node["behaviour"] == "fail":
            node["fail_attempts"] = draw(st.sampled_from([1, 1, 99]))
        elif node["behaviour"] in ("self_event", "timeout"):
            node["replan"] = not (stored_timers and draw(st.booleans()))
        elif node["behaviour"] == "event":
            node["events"] = draw(st.integers(1, 3))
        elif node["behaviour"] == "cancel":
            node["on_cancel"] = draw(st.sampled_from(["fail", "finish"]))
        return common(node)

    def group(depth: int) -> dict[str, Any]:
        node: dict[str, Any] = {
            "kind": "group",
            "mode": draw(st.sampled_from(["S", "C"])),
            "run": draw(st.sampled_from([None, None, "sync", "async"])),
            "sleep": draw(st.sampled_from([0.0, 0.002])),
            "children": [],
        }
        for _ in range(draw(st.integers(1, 3))):
            if budget[0] <= 0:
                break
            budget[0] -= 1
            if depth < 2 and budget[0] > 1 and draw(st.integers(0, 3)) == 0:
                node["children"].append(group(depth + 1))
            else:
                node["children"].append(leaf())
        return common(node)

    tree = group(0)
    nodes = ea.walk(tree)
    for index, node in enumerate(nodes):
        node["id"] = f"n{index}"
    leaves = [n for n in nodes if n["kind"] == "leaf"]
    for index, node in enumerate(leaves):
        if index and draw(st.integers(0, 3)) == 0:
            node["ref"] = leaves[draw(st.integers(0, index - 1))]["id"]
    if plan_failures and draw(st.integers(0, 11)) == 0:
        nodes[draw(st.integers(0, len(nodes) - 1))]["fail_plan"] = True
    return tree


# ---- backends and engines ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def pg_props_url() -> Iterator[str]:
    """A PostgreSQL database of its own for this module's run, dropped afterwards."""
    name = f"dynflow_props_{uuid.uuid4().hex[:12]}"
    try:
        _run_async(lambda: _create_database(name))
    except OSError as exc:
        pytest.fail(f"cannot create {name} on 127.0.0.1:5432 ({exc}); run scripts/test-deps.sh")
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        _run_async(lambda: _drop_database(name))


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite-file"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgresql),
    ]
)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'props.db'}"
    return str(request.getfixturevalue("pg_props_url"))


def world_options(**extra: Any) -> dict[str, Any]:
    return {
        "pool_size": 4,
        "cleaner_interval": None,
        "delayed_executor_interval": None,
        "heartbeat_interval": 3600,
        "termination_timeout": 10,
        **extra,
    }


class Engine:
    """An event loop for the examples of one test, a tracer, and the worlds on ``db``."""

    def __init__(self, db: str, workdir: Path) -> None:
        self.db = db
        self.workdir = workdir
        self.runner = asyncio.Runner()
        self.tracer = em.TransitionTracer()
        self.world: World | None = None

    def run(self, make: Callable[[], Awaitable[T]], timeout: float = 120.0) -> T:
        async def bounded() -> T:
            return await asyncio.wait_for(make(), timeout)

        return self.runner.run(bounded())

    async def shared_world(self) -> World:
        """One world for every example of a test (worlds cost migrations and threads)."""
        if self.world is None:
            self.world = World(self.db, **world_options())
            await self.world.start()
        return self.world

    @contextlib.contextmanager
    def log(self) -> Iterator[Path]:
        """An execution log for one example, removed afterwards."""
        path = self.workdir / f"exec-{uuid.uuid4().hex}.jsonl"
        try:
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def close(self) -> None:
        if self.world is not None:
            self.runner.run(self.world.stop())
        self.runner.close()


@pytest.fixture
def engine(db: str, tmp_path: Path) -> Iterator[Engine]:
    eng = Engine(db, tmp_path)
    with eng.tracer.installed():
        try:
            yield eng
        finally:
            eng.close()


# ---- the scenarios -----------------------------------------------------------------------------
def fresh_states(shape: em.Shape) -> dict[int, str]:
    states = {}
    for node_id in shape.nodes:
        states[shape.plan_step[node_id]] = "success"
        for s in (shape.run_step[node_id], shape.finalize_step[node_id]):
            if s is not None:
                states[s] = "pending"
    return states


class Case:
    """One plan of a scenario: its tree, its execution log, and what is known of it."""

    def __init__(self, tree: dict[str, Any], log: Path) -> None:
        self.tree = tree
        self.log = log
        self.plan_id = ""
        self.shape: em.Shape | None = None
        self.pred: em.Prediction | None = None
        self.before = em.Counts()
        self.executions = 0  # "start execution" entries before the prediction starts
        self.resumes = 0
        self.crashed = False

    @property
    def planned(self) -> bool:
        return self.shape is not None

    def starts(self) -> int:
        return sum(
            1 for e in ea.read_log(self.log) if e.get("e") == "start" and e["p"] == self.plan_id
        )


@contextlib.contextmanager
def cases(engine: Engine, trees: list[dict[str, Any]]) -> Iterator[list[Case]]:
    with contextlib.ExitStack() as stack:
        yield [Case(tree, stack.enter_context(engine.log())) for tree in trees]


async def trigger(world: World, engine: Engine, case: Case) -> Any:
    """Trigger the case's plan; a planning failure is checked at once (nothing runs)."""
    triggered = await world.trigger(ea.class_for(case.tree), *ea.trigger_args(case.tree, case.log))
    case.plan_id = triggered.id
    plan = await world.load_plan(triggered.id)
    assert plan is not None
    if not triggered.triggered:
        event("planning failed")
        em.check_planning_failure(plan, case.tree)
        assert ea.read_log(case.log) == []
        assert engine.tracer.of_plan(plan.id) == []
        return None
    assert em.predict_planning(case.tree).failing is None
    case.shape = em.shape_of(plan, case.tree)
    return triggered


async def wait_end(world: World, case: Case, future: Any = None, eager: bool = False) -> None:
    assert case.shape is not None
    await asyncio.wait_for(drive(world, case.plan_id, case.shape, future, eager), PLAN_TIMEOUT)


async def finish_with_resumes(world: World, case: Case, eager: bool) -> None:
    """Resume a paused plan (and drive it) at most ``RESUMES`` times, as a human would."""
    while case.resumes < RESUMES:
        statuses = await world.plan_statuses({"uuid": [case.plan_id]})
        if statuses[case.plan_id]["state"] != "paused":
            break
        case.resumes += 1
        future = await world.resume(case.plan_id)
        await wait_end(world, case, future, eager)


async def check_end(world: World, engine: Engine, case: Case) -> None:
    shape, pred, plan_id = case.shape, case.pred, case.plan_id
    assert shape is not None and pred is not None
    plan = await world.load_plan(plan_id)
    assert plan is not None
    event(f"end {plan.state}/{plan.result}, resumed {case.resumes}")
    stored = (await world.plan_statuses({"uuid": [plan_id]}))[plan_id]
    em.check_plan(plan, shape, pred, stored)
    view = em.LogView.of(ea.read_log(case.log), plan_id)
    em.check_log(view, shape, pred.states, crashed=case.crashed)
    em.check_counts(view, case.before, pred.counts, crashed=case.crashed)
    assert case.resumes == pred.resumes, (case.resumes, pred.resumes)
    history = [h["name"] for h in plan.execution_history]
    assert history.count("start execution") == case.executions + pred.executions, history
    assert engine.tracer.of_plan(plan_id) == []
    # nothing left behind
    assert await world.store.planned_events_of(plan_id) == []
    locks = await world.store.find_records(cls=EXECUTION_LOCK)
    assert not [lock for lock in locks if plan_id in str(lock["id"])], locks
    assert not world.is_running(plan_id)


async def run_flows(engine: Engine, trees: list[dict[str, Any]], eager: bool) -> None:
    """Trigger the plans together, drive them, resume the paused ones; then every plan ends
    as predicted."""
    world = await engine.shared_world()
    with cases(engine, trees) as all_cases:
        started = [(case, await trigger(world, engine, case)) for case in all_cases]
        running = [(case, t) for case, t in started if t is not None]
        for case, _t in running:
            assert case.shape is not None
            case.pred = em.Model(case.shape, fresh_states(case.shape)).predict(
                "execute", RESUMES
            )
        await asyncio.gather(*(wait_end(world, case, t.finished, eager) for case, t in running))
        await asyncio.gather(*(finish_with_resumes(world, case, eager) for case, _ in running))
        for case, _t in running:
            await check_end(world, engine, case)




async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.002)


async def reader_world(engine: Engine) -> World:
    """A world that neither recovers nor executes anything: to look at the store."""
    reader = World(engine.db, **world_options(auto_recover=False, auto_execute=False))
    await reader.start()
    return reader


async def continue_after_restart(engine: Engine, all_cases: list[Case], eager: bool) -> None:
    """The executing world is gone: predict each plan from what the store holds, start a world
    (recovery and auto-execute run), drive and resume; then every plan ends as predicted."""
    reader = await reader_world(engine)
    try:
        for case in all_cases:
            plan = await reader.load_plan(case.plan_id)
            assert plan is not None and case.shape is not None
            snap = em.snapshot_of(plan, case.shape)
            running = sum(1 for state in snap.states.values() if state == "running")
            event(f"after the stop: plan {snap.plan_state}, {running} running steps")
            if not case.crashed:  # a clean stop parks a running plan (or it ended before)
                assert snap.plan_state in ("paused", "stopped"), snap
                assert running == 0, snap
            case.before = em.LogView.of(ea.read_log(case.log), case.plan_id).counts()
            case.executions = [h["name"] for h in plan.execution_history].count(
                "start execution"
            )
            model = em.Model(
                case.shape,
                snap.states,
                fresh_attempts=dict(case.before.fresh),
                finalize_attempts=dict(case.before.finalize),
                waiting=snap.waiting,
                events_seen=snap.events_seen,
                errors=snap.errors,
            )
            case.resumes = 0
            case.pred = em.predict_restart(model, snap.plan_state, RESUMES)
    finally:
        await reader.stop()
    world = World(engine.db, **world_options())  # recovery and auto-execute at start
    await world.start()
    try:
        await asyncio.gather(*(wait_end(world, case, None, eager) for case in all_cases))
        await asyncio.gather(*(finish_with_resumes(world, case, eager) for case in all_cases))
        for case in all_cases:
            await check_end(world, engine, case)
    finally:
        await world.stop()


async def run_stopped(
    engine: Engine, trees: list[dict[str, Any]], after: int, how: str, eager: bool
) -> None:
    """Stop the world once ``after`` invocations were logged (``clean``: ``world.stop``;
    ``abandon``: a crash), then another world takes over."""
    first = World(engine.db, **world_options())
    await first.start()
    gone = False
    try:
        with cases(engine, trees) as all_cases:
            started = [(case, await trigger(first, engine, case)) for case in all_cases]
            running = [(case, t) for case, t in started if t is not None]
            if not running:
                return
            drivers = [
                asyncio.ensure_future(
                    drive(first, case.plan_id, case.shape, t.finished, eager)  # type: ignore[arg-type]
                )
                for case, t in running
            ]

            async def point_reached() -> bool:
                if not any(first.is_running(case.plan_id) for case, _t in running):
                    return True
                return sum(case.starts() for case, _t in running) >= after

            try:
                await wait_until(point_reached)
            finally:
                for driver in drivers:
                    driver.cancel()
                for driver in drivers:
                    with contextlib.suppress(asyncio.CancelledError):
                        await driver
            if how == "clean":
                await first.stop()
            else:
                await first.abandon()
            gone = True
            for case, _t in running:
                case.crashed = how != "clean"
            await continue_after_restart(engine, [case for case, _t in running], eager)
    finally:
        if not gone:
            await first.stop()


def _spawn_worker(
    engine: Engine, tree: dict[str, Any], log: Path
) -> tuple[Any, Path, Path, Path]:
    tag = uuid.uuid4().hex
    tree_file = engine.workdir / f"tree-{tag}.json"
    ready = engine.workdir / f"ready-{tag}.json"
    out = engine.workdir / f"worker-{tag}.out"
    tree_file.write_text(json.dumps(tree))
    with out.open("wb") as output:
        proc = subprocess.Popen(
            [
                sys.executable, str(WORKER), "--db", engine.db, "--tree", str(tree_file),
                "--log", str(log), "--ready", str(ready),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    return proc, ready, out, tree_file


async def run_killed(engine: Engine, tree: dict[str, Any], after: int) -> None:
    """A world in a subprocess runs the plan and is killed with SIGKILL once ``after``
    invocations were logged; a world here takes over."""
    with cases(engine, [tree]) as (case,):
        proc, ready, out, tree_file = _spawn_worker(engine, tree, case.log)
        try:
            await wait_until(lambda: _exists_or_dead(ready, proc), timeout=60)
            assert ready.exists(), out.read_text(errors="replace")[-5000:]
            case.plan_id = json.loads(ready.read_text())["plan_id"]

            async def point_reached() -> bool:
                if proc.poll() is not None or ended_marker(ready).exists():
                    return True
                return case.starts() >= after

            await wait_until(point_reached, timeout=PLAN_TIMEOUT)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            output = out.read_text(errors="replace")
            for path in (ready, out, ready.with_suffix(".tmp"), ended_marker(ready), tree_file):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        assert proc.returncode == -signal.SIGKILL, output[-5000:]
        reader = await reader_world(engine)
        try:
            plan = await reader.load_plan(case.plan_id)
            assert plan is not None
            if plan.state == "stopped" and not plan.run_steps():  # planning failed
                em.check_planning_failure(plan, tree)
                return
            case.shape = em.shape_of(plan, tree)
        finally:
            await reader.stop()
        case.crashed = True
        await continue_after_restart(engine, [case], eager=False)


async def _exists_or_dead(path: Path, proc: Any) -> bool:
    return path.exists() or proc.poll() is not None


def several(strategy: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Any]:
    return st.lists(strategy, min_size=1, max_size=3)


# ---- the properties: fast subset (make test) ---------------------------------------------------
@FAST
@given(plans=several(trees()), eager=st.booleans())
def test_random_flows_end_as_documented(
    engine: Engine, plans: list[dict[str, Any]], eager: bool
) -> None:
    note(f"trees: {json.dumps(plans)}")
    engine.run(lambda: run_flows(engine, plans, eager))


@settings(FAST, max_examples=6)
@given(
    plans=several(trees(plan_failures=False, rerun=True, stored_timers=True)),
    after=st.integers(0, 12),
    eager=st.booleans(),
)
def test_clean_stop_and_restart(
    engine: Engine, plans: list[dict[str, Any]], after: int, eager: bool
) -> None:
    note(f"trees: {json.dumps(plans)}")
    engine.run(lambda: run_stopped(engine, plans, after, "clean", eager))


@settings(FAST, max_examples=6)
@given(
    plans=several(trees(plan_failures=False, rerun=True)),
    after=st.integers(0, 12),
    eager=st.booleans(),
)
def test_crash_and_recovery(
    engine: Engine, plans: list[dict[str, Any]], after: int, eager: bool
) -> None:
    note(f"trees: {json.dumps(plans)}")
    engine.run(lambda: run_stopped(engine, plans, after, "abandon", eager))


@settings(FAST, max_examples=2)
@given(tree=trees(plan_failures=False, rerun=True), after=st.integers(1, 10))
def test_sigkill_and_recovery(engine: Engine, tree: dict[str, Any], after: int) -> None:
    note(f"tree: {json.dumps(tree)}")
    engine.run(lambda: run_killed(engine, tree, after))


# ---- the long variant (make reliability) -------------------------------------------------------
@pytest.mark.reliability
@LONG
@given(plans=several(trees(max_nodes=10)), eager=st.booleans())
def test_random_flows_end_as_documented_long(
    engine: Engine, plans: list[dict[str, Any]], eager: bool
) -> None:
    note(f"trees: {json.dumps(plans)}")
    engine.run(lambda: run_flows(engine, plans, eager))


@pytest.mark.reliability
@settings(LONG, max_examples=60)
@given(
    plans=several(trees(plan_failures=False, rerun=True)),
    after=st.integers(0, 16),
    eager=st.booleans(),
)
def test_crash_and_recovery_long(
    engine: Engine, plans: list[dict[str, Any]], after: int, eager: bool
) -> None:
    note(f"trees: {json.dumps(plans)}")
    engine.run(lambda: run_stopped(engine, plans, after, "abandon", eager))


@pytest.mark.reliability
@settings(LONG, max_examples=60)
@given(
    plans=several(trees(plan_failures=False, rerun=True, stored_timers=True)),
    after=st.integers(0, 16),
    eager=st.booleans(),
)
def test_clean_stop_and_restart_long(
    engine: Engine, plans: list[dict[str, Any]], after: int, eager: bool
) -> None:
    note(f"trees: {json.dumps(plans)}")
    engine.run(lambda: run_stopped(engine, plans, after, "clean", eager))


@pytest.mark.reliability
@settings(LONG, max_examples=12)
@given(tree=trees(plan_failures=False, rerun=True), after=st.integers(1, 14))
def test_sigkill_and_recovery_long(engine: Engine, tree: dict[str, Any], after: int) -> None:
    note(f"tree: {json.dumps(tree)}")
    engine.run(lambda: run_killed(engine, tree, after))
