"""Crash recovery with a real engine process killed by SIGKILL (spec §5.4).

A first process (``tests/support/crash_worker.py start``) triggers four kinds of
``CrashScenario`` plans (each: ``Prepare`` then a main step, in sequence, then a finalize):

* ``done``: finished before the kill; must stay exactly as it was;
* ``sleeper``: its synchronous main step sleeps and is running at the kill; after the restart
  the step is ``error`` "Abnormal termination (previous state: running)" and the plan is
  ``paused``/``error`` (default rescue strategy: pause);
* ``event``: suspended waiting for an external event; after the restart it is re-entered once
  with no event, accepts the event and ends ``stopped``/``success``;
* ``timer``: suspended on a stored planned event (``plan_event(..., delay)``) that falls due
  while no process runs; after the restart the event is delivered and the plan succeeds.

The worker is killed as soon as it reports "ready"; a second process (``recover``) with default
world options recovers, sends the events and waits for the end states. Every step writes
``<plan>:<step>:<phase>`` to a fsynced execution log before working, which proves that no step
ran more often than it legitimately may.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dynflow import World
from tests.support import crash_worker
from tests.support.crash_actions import (
    KIND_DONE,
    KIND_EVENT,
    KIND_SLEEPER,
    KIND_TIMER,
    read_log,
    snapshot_plan,
)

WORKER = Path(crash_worker.__file__).resolve()
TIMER_DELAY = 2.0
READY_TIMEOUT = 30.0
RECOVER_TIMEOUT = 40.0
ABNORMAL = "Abnormal termination (previous state: running)"

# How often each (kind, step, phase) may appear in the execution log in the end.
EXPECTED: dict[str, dict[tuple[str, str], int]] = {
    KIND_DONE: {("prepare", "run"): 1, ("main", "run"): 1, ("finalize", "finalize"): 1},
    KIND_SLEEPER: {("prepare", "run"): 1, ("main", "run"): 1},
    KIND_EVENT: {
        ("prepare", "run"): 1,
        ("main", "first"): 1,
        ("main", "reentry"): 1,
        ("main", "event"): 1,
        ("finalize", "finalize"): 1,
    },
    KIND_TIMER: {
        ("prepare", "run"): 1,
        ("main", "first"): 1,
        ("main", "reentry"): 1,
        ("main", "event"): 1,
        ("finalize", "finalize"): 1,
    },
}
# ... and at the moment of the kill.
EXPECTED_AT_KILL: dict[str, dict[tuple[str, str], int]] = {
    KIND_DONE: EXPECTED[KIND_DONE],
    KIND_SLEEPER: EXPECTED[KIND_SLEEPER],
    KIND_EVENT: {("prepare", "run"): 1, ("main", "first"): 1},
    KIND_TIMER: {("prepare", "run"): 1, ("main", "first"): 1},
}


def _spawn(mode: str, db_url: str, workdir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    output = workdir / f"{mode}.out"
    with output.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, str(WORKER), mode, "--db", db_url, "--dir", str(workdir),
                "--delay", str(TIMER_DELAY),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    return proc, output


def _tail(path: Path, lines: int = 60) -> str:
    if not path.exists():
        return "(no output)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _wait_for_file(
    path: Path, proc: subprocess.Popen[bytes], output: Path, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"worker exited with {proc.returncode} early:\n{_tail(output)}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"worker did not write {path.name} in {timeout} s:\n{_tail(output)}")
        time.sleep(0.02)
    return json.loads(path.read_text())


def _per_plan(
    counts: Counter[tuple[str, int, str]], plans: dict[str, dict[str, Any]]
) -> dict[str, dict[tuple[str, str], int]]:
    """Log counts keyed by plan and (step role, phase); unknown plans or steps fail."""
    result: dict[str, dict[tuple[str, str], int]] = {pid: {} for pid in plans}
    for (plan_id, step_id, phase), n in counts.items():
        assert plan_id in plans, f"log line of an unknown plan {plan_id}"
        roles = {v: k for k, v in plans[plan_id].items() if k != "kind"}
        assert step_id in roles, f"log line of an unknown step {plan_id}:{step_id}"
        result[plan_id][(roles[step_id], phase)] = n
    return result


async def test_sigkill_and_recover(db_url: str, tmp_path: Path) -> None:
    log_path = tmp_path / crash_worker.EXEC_LOG

    # ---- 1st process: reach the wanted states, then die hard ----------------------------------
    proc, output = _spawn("start", db_url, tmp_path)
    try:
        ready = _wait_for_file(tmp_path / crash_worker.READY_FILE, proc, output, READY_TIMEOUT)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()  # reaped: a zombie would still look alive to the recovery's pid check
    killed_at = time.time()
    assert proc.returncode == -signal.SIGKILL, _tail(output)
    assert ready["pid"] == proc.pid
    plans: dict[str, dict[str, Any]] = ready["plans"]
    kinds = Counter(info["kind"] for info in plans.values())
    assert kinds == Counter(crash_worker.COUNTS), kinds

    at_kill = _per_plan(read_log(log_path), plans)
    for plan_id, info in plans.items():
        assert at_kill[plan_id] == EXPECTED_AT_KILL[info["kind"]], (info, at_kill[plan_id])
    assert ready["deliver_at"] > killed_at, "the timers fired before the kill; raise the delay"

    # the planned events fall due while no engine runs
    time.sleep(max(0.0, ready["deliver_at"] - time.time()) + 0.5)

    # ---- 2nd process: recover, send the events, wait for the end states ------------------------
    proc2, output2 = _spawn("recover", db_url, tmp_path)
    try:
        recovered = _wait_for_file(
            tmp_path / crash_worker.RECOVERED_FILE, proc2, output2, RECOVER_TIMEOUT
        )
        proc2.wait(timeout=30)
    finally:
        if proc2.poll() is None:
            proc2.kill()
            proc2.wait()
    assert proc2.returncode == 0, _tail(output2)

    # ---- no step executed twice --------------------------------------------------------------
    final = _per_plan(read_log(log_path), plans)
    for plan_id, info in plans.items():
        assert final[plan_id] == EXPECTED[info["kind"]], (plan_id, info, final[plan_id])

    # ---- what the recovering process saw right after its start ---------------------------------
    observed = recovered["observed_at_start"]
    for plan_id, info in plans.items():
        seen = observed[plan_id]
        if info["kind"] == KIND_SLEEPER:
            assert (seen["state"], seen["result"], seen["main"]) == ("paused", "error", "error")
            assert not seen["running_here"]
        elif info["kind"] == KIND_EVENT:
            assert seen["state"] == "running", seen
            assert seen["main"] in ("suspended", "running"), seen
            assert seen["running_here"], seen
        elif info["kind"] == KIND_TIMER:  # its overdue event may have been delivered already
            assert seen["state"] in ("running", "stopped"), seen
        else:
            assert (seen["state"], seen["result"]) == ("stopped", "success")

    # ---- end states, read independently of both engine processes ------------------------------
    async with World(db_url, auto_recover=False, auto_execute=False, cleaner_interval=None) as w:
        assert await w.count_plans() == len(plans), "a plan was lost or duplicated"
        for plan_id, info in plans.items():
            plan = await w.load_plan(plan_id)
            assert plan is not None, f"plan {plan_id} lost"
            kind = info["kind"]
            main = plan.steps[info["main"]]
            prepare = plan.steps[info["prepare"]]
            main_action = plan.actions[main.action_id]
            history = [h["name"] for h in plan.execution_history]
            if kind == KIND_DONE:
                assert snapshot_plan(plan) == ready["snapshots"][plan_id], "a done plan changed"
                continue
            assert prepare.state == "success"
            if kind == KIND_SLEEPER:
                assert (plan.state, plan.result) == ("paused", "error")
                assert main.state == "error"
                assert main.error is not None and main.error["message"] == ABNORMAL
                assert plan.steps[info["finalize"]].state == "pending"
                assert history == ["start execution", "terminate execution"], history
                assert "woke" not in main_action.output
                continue
            assert (plan.state, plan.result) == ("stopped", "success"), (kind, plan)
            assert main.state == "success"
            assert plan.steps[info["finalize"]].state == "success"
            assert history == [
                "start execution", "terminate execution", "start execution", "finish execution",
            ], history
            if kind == KIND_EVENT:
                assert main_action.output["events"] == [{"finish": True}]
            else:
                assert main_action.output["woken_by"] == "tick"
                assert main_action.output["deliver_at"] == pytest.approx(
                    ready["snapshots"][plan_id]["outputs"][str(main.action_id)]["deliver_at"]
                )
                assert await w.store.planned_events_of(plan_id) == [], "event not consumed"
        locks = await w.store.find_records(cls="ExecutionLock")
        assert locks == [], f"execution locks left behind: {locks}"
        worlds = {r["id"] for r in await w.store.find_records(cls="ExecutorWorld")}
        assert ready["world_id"] not in worlds, "the killed world was not invalidated"
        assert recovered["world_id"] not in worlds, "the stopped world left its record"
