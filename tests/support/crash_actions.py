"""Actions of the crash-recovery test, importable by the test and by ``crash_worker.py``.

Every step appends ``<plan_id>:<step_id>:<phase>`` to an execution log (append mode, flushed
and fsynced per line) *before* doing its work, so the log survives a SIGKILL and shows every
invocation. Phases:

* ``run``: a plain step ran (it is not meant to ever run twice);
* ``first``: a suspending step ran for the first time (event ``None`` and no prior output);
* ``reentry``: a suspending step ran again with event ``None`` (after a restart);
* ``event``: a suspending step processed an event;
* ``finalize``: the root action's finalize step ran.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from dynflow import Action

_LOG_LOCK = threading.Lock()

KIND_DONE = "done"
KIND_SLEEPER = "sleeper"
KIND_EVENT = "event"
KIND_TIMER = "timer"
KINDS = (KIND_DONE, KIND_SLEEPER, KIND_EVENT, KIND_TIMER)


def append_line(path: str | Path, line: str) -> None:
    """Append one line durably: O_APPEND write, then fsync, before the caller goes on."""
    data = (line.rstrip("\n") + "\n").encode()
    with _LOG_LOCK:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


def record(action: Action, step_id: int | None, phase: str) -> None:
    append_line(action.input["log"], f"{action.execution_plan_id}:{step_id}:{phase}")


def read_log(path: str | Path) -> Counter[tuple[str, int, str]]:
    """Count the invocations in an execution log: ``{(plan_id, step_id, phase): n}``."""
    counts: Counter[tuple[str, int, str]] = Counter()
    if not Path(path).exists():
        return counts
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        plan_id, step_id, phase = line.split(":")
        counts[(plan_id, int(step_id), phase)] += 1
    return counts


class Prepare(Action):
    """A plain step done before the interesting one; must never run again after a restart."""

    def run(self) -> None:
        record(self, self.run_step_id, "run")
        self.output["prepared"] = True


class Finish(Action):
    """A plain step of plans that end before the crash."""

    def run(self) -> None:
        record(self, self.run_step_id, "run")
        self.output["finished"] = True


class Sleeper(Action):
    """A synchronous step still running when the process is killed."""

    def run(self) -> None:
        record(self, self.run_step_id, "run")
        time.sleep(float(self.input.get("seconds", 30.0)))
        self.output["woke"] = True


class WaitForEvent(Action):
    """Suspends until an external event; ``{"finish": true}`` completes it."""

    def run(self, event: Any = None) -> None:
        if event is None:
            record(self, self.run_step_id, "reentry" if self.output.get("started") else "first")
            self.output["started"] = True
            self.suspend()
        record(self, self.run_step_id, "event")
        self.output.setdefault("events", []).append(event)
        if isinstance(event, dict) and event.get("finish"):
            return
        self.suspend()


class WaitForTimer(Action):
    """Suspends and wakes itself with a planned (stored) event after ``delay`` seconds."""

    def run(self, event: Any = None) -> None:
        if event is None:
            if self.output.get("deliver_at") is None:
                record(self, self.run_step_id, "first")
                delay = float(self.input["delay"])
                self.output["deliver_at"] = time.time() + delay
                self.plan_event("tick", delay)
            else:
                # the stored event is still pending; it must not be planned a second time
                record(self, self.run_step_id, "reentry")
            self.suspend()
        record(self, self.run_step_id, "event")
        self.output["woken_by"] = event


MAIN_ACTIONS: dict[str, type[Action]] = {
    KIND_DONE: Finish,
    KIND_SLEEPER: Sleeper,
    KIND_EVENT: WaitForEvent,
    KIND_TIMER: WaitForTimer,
}


class CrashScenario(Action):
    """``Prepare`` then the step of the scenario ``kind``, in sequence; a finalize at the end."""

    def plan(self, kind: str, log: str, delay: float = 2.0, seconds: float = 30.0) -> None:
        with self.sequence():
            self.plan_action(Prepare, log=log)
            main = MAIN_ACTIONS[kind]
            extra: dict[str, Any] = {}
            if main is WaitForTimer:
                extra["delay"] = delay
            if main is Sleeper:
                extra["seconds"] = seconds
            self.plan_action(main, log=log, **extra)
        self.plan_self(kind=kind, log=log)

    def finalize(self) -> None:
        record(self, self.finalize_step_id, "finalize")


def scenario_steps(plan: Any) -> dict[str, int]:
    """Step ids of a loaded ``CrashScenario`` plan: ``prepare``, ``main`` and ``finalize``."""
    found: dict[str, int] = {}
    for action in plan.actions.values():
        if isinstance(action, CrashScenario):
            found["finalize"] = action.finalize_step_id
        elif isinstance(action, Prepare):
            found["prepare"] = action.run_step_id
        elif action.run_step_id is not None:
            found["main"] = action.run_step_id
    return found


def snapshot_plan(plan: Any) -> dict[str, Any]:
    """Everything persisted about a plan, as JSON values (to check that it did not change)."""
    return {
        "plan": plan.to_hash(),
        "steps": {str(s.id): s.to_hash() for s in plan.steps.values()},
        "outputs": {str(a.id): a.output for a in plan.actions.values()},
    }
