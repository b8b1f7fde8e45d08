"""Actions of the engine property tests, driven by a tree of node specs (JSON values).

Importable by the tests and by ``engine_crash_worker.py`` (a world killed with SIGKILL), so the
class names are the same in both processes.

A *tree* is nested dicts; every node has an ``id`` ("n0", "n1", ... in pre-order) and:

* ``kind``: ``"group"`` (``mode`` ``"S"``/``"C"``: its ``children`` are planned with
  ``plan_action`` inside ``sequence()``/``concurrence()``) or ``"leaf"``;
* ``run``: ``None`` (group only), ``"sync"`` (a plain ``def run`` in the queue's thread pool) or
  ``"async"`` (``async def run`` on the loop); ``sleep``: seconds the run sleeps first;
* ``behaviour`` (leaf): ``ok``; ``fail`` (the first ``fail_attempts`` fresh runs fail);
  ``event`` (suspends until ``events`` external events arrived); ``self_event`` (suspends, wakes
  itself with a planned event); ``timeout`` (suspends; its ``Timeouts`` event fails it) — both
  plan their event again when re-entered after a restart unless ``replan`` is false (then they
  rely on the stored event, as a real action would);
  ``cancel`` (a ``Cancellable`` step that suspends until ``world.cancel``: then it fails or
  finishes, ``on_cancel``);
* ``finalize``: has a finalize step, whose first ``fail_finalize`` runs fail;
* ``fail_plan``: its ``plan()`` raises (a group after planning its children, a leaf at once);
* ``rescue``: what ``rescue_strategy_for_self`` answers (``pause``/``skip``/``fail``);
* ``ref``: (leaf) the id of an earlier leaf whose ``output["value"]`` is this one's
  ``input["ref"]`` (an output reference);
* ``rerun``: the class sets ``rerun_on_recovery`` (a step running at a crash is re-run).

Every invocation of ``run``/``finalize`` appends a ``start`` line to an execution log (JSON lines;
``fsync`` per line when the input says so, for SIGKILL tests) before doing anything, and an
``end`` line with its outcome when it leaves. ``kind`` of a run start: ``fresh`` (event ``None``
and the stored output does not say it waits), ``reentry`` (event ``None`` while it waits: the
re-run of a suspended step after a restart), ``event`` (external), ``timer`` (its own planned
event or timeout) or ``cancel``. Attempt numbers (for the
``fail_*`` counts) are the number of earlier ``fresh``/``finalize`` starts of the step in the log,
so they survive crashes.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from dynflow import ABORT, CANCEL, SKIP, TIMEOUT, Action, Cancellable, Timeouts
from dynflow.errors import PlanningError

_LOCK = threading.Lock()
VALUE_PREFIX = "v-"
TICK = "tick"
SELF_EVENT_DELAY = 0.01
TIMEOUT_DELAY = 0.02
PLANNING_FAILURE = "planned planning failure"
RUN_FAILURE = "planned run failure"
FINALIZE_FAILURE = "planned finalize failure"
CANCEL_FAILURE = "cancelled by the user"


def value_of(node_id: str) -> str:
    """What a successful run step of ``node_id`` puts in ``output["value"]``."""
    return VALUE_PREFIX + node_id


# ---- the execution log ---------------------------------------------------------------------------
def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The entries of an execution log, in the order they were written."""
    p = Path(path)
    if not p.exists():
        return []
    entries = []
    for line in p.read_text().splitlines():
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by SIGKILL: the write never completed
                continue
    return entries


def _append(path: str, entry: dict[str, Any], fsync: bool) -> None:
    data = (json.dumps(entry, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _count_starts(path: str, plan_id: str, step_id: int, kinds: tuple[str, ...]) -> int:
    return sum(
        1
        for e in read_log(path)
        if e.get("e") == "start" and e["p"] == plan_id and e["s"] == step_id and e["k"] in kinds
    )


class Invocation:
    """One call of ``run``/``finalize``: logs its start at once and its end on ``close``."""

    def __init__(self, action: Action, step_id: int, phase: str, kind: str, event: Any) -> None:
        self.log = str(action.input["log"])
        self.fsync = bool(action.input.get("fsync"))
        self.id = uuid.uuid4().hex
        entry: dict[str, Any] = {
            "e": "start",
            "i": self.id,
            "p": action.execution_plan_id,
            "s": step_id,
            "n": action.input["node"],
            "ph": phase,
            "k": kind,
            "ev": event,
            "pid": os.getpid(),
        }
        if phase == "run" and "ref" in action.input:
            entry["ref"] = action.input["ref"]
        counted = ("fresh",) if phase == "run" else ("finalize",)
        with _LOCK:
            self.attempt = _count_starts(self.log, action.execution_plan_id, step_id, counted)
            if kind in counted:
                self.attempt += 1
            entry["a"] = self.attempt
            _append(self.log, entry, self.fsync)

    def close(self, outcome: str) -> None:
        with _LOCK:
            _append(self.log, {"e": "end", "i": self.id, "o": outcome}, self.fsync)


# ---- behaviour -----------------------------------------------------------------------------------
def _begin_run(action: Action, event: Any) -> Invocation:
    if event is None:
        kind = "reentry" if action.output.get("waiting") else "fresh"
    elif event in (CANCEL, ABORT):
        kind = "cancel"
    elif event in (TICK, TIMEOUT):
        kind = "timer"
    else:
        kind = "event"
    assert action.run_step_id is not None
    return Invocation(action, action.run_step_id, "run", kind, event)


def _succeed(action: Action) -> None:
    action.output["waiting"] = False
    action.output["value"] = value_of(action.input["node"])


def _behave(action: Action, event: Any, inv: Invocation) -> None:
    """The run of a node after its sleep; returns (success), raises (error) or suspends."""
    spec = action.input["spec"]
    out = action.output
    if event in (CANCEL, ABORT):
        out["cancelled"] = out.get("cancelled", 0) + 1
        if spec.get("on_cancel") == "fail":
            out["waiting"] = False
            action.fail(CANCEL_FAILURE)
        _succeed(action)
        return
    behaviour = spec.get("behaviour", "ok")
    if behaviour == "ok":
        _succeed(action)
    elif behaviour == "fail":
        if inv.attempt <= int(spec.get("fail_attempts", 0)):
            action.fail(f"{RUN_FAILURE} (attempt {inv.attempt})")
        _succeed(action)
    elif behaviour == "event":
        if event is not None:
            out["events"] = out.get("events", 0) + 1
            if out["events"] >= int(spec.get("events", 1)):
                _succeed(action)
                return
        out["waiting"] = True
        action.suspend()
    elif behaviour == "self_event":
        if event == TICK:
            _succeed(action)
            return
        if not out.get("waiting") or spec.get("replan", True):
            # Planned again at every run without an event (a duplicate is dropped: optional),
            # unless ``replan`` is off: a re-entry then relies on the stored event.
            action.plan_event(TICK, SELF_EVENT_DELAY, optional=True)
        out["waiting"] = True
        action.suspend()
    elif behaviour == "timeout":
        if event == TIMEOUT:
            out["waiting"] = False
            assert isinstance(action, Timeouts)
            action.process_timeout()
        assert isinstance(action, Timeouts)
        if not out.get("waiting") or spec.get("replan", True):
            action.schedule_timeout(TIMEOUT_DELAY, optional=True)
        out["waiting"] = True
        action.suspend()
    elif behaviour == "cancel":
        out["waiting"] = True
        action.suspend()
    else:
        raise AssertionError(f"unknown behaviour {behaviour!r}")


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "success"
    if type(exc).__name__ == "Suspend":
        return "suspend"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "error"


def sync_run(action: Action, event: Any) -> None:
    if event == SKIP:
        return  # skipped (Dynflow's run(Skip)): nothing to do, nothing logged
    inv = _begin_run(action, event)
    error: BaseException | None = None
    try:
        time.sleep(float(action.input["spec"].get("sleep", 0.0)))
        _behave(action, event, inv)
    except BaseException as exc:
        error = exc
        raise
    finally:
        inv.close(_outcome(error))


async def async_run(action: Action, event: Any) -> None:
    if event == SKIP:
        return  # skipped (Dynflow's run(Skip)): nothing to do, nothing logged
    inv = _begin_run(action, event)
    error: BaseException | None = None
    try:
        await asyncio.sleep(float(action.input["spec"].get("sleep", 0.0)))
        _behave(action, event, inv)
    except BaseException as exc:
        error = exc
        raise
    finally:
        inv.close(_outcome(error))


def do_finalize(action: Action) -> None:
    assert action.finalize_step_id is not None
    inv = Invocation(action, action.finalize_step_id, "finalize", "finalize", None)
    error: BaseException | None = None
    try:
        time.sleep(float(action.input["spec"].get("sleep", 0.0)))
        if inv.attempt <= int(action.input["spec"].get("fail_finalize", 0)):
            raise RuntimeError(f"{FINALIZE_FAILURE} (attempt {inv.attempt})")
    except BaseException as exc:
        error = exc
        raise
    finally:
        inv.close(_outcome(error))


# ---- planning ------------------------------------------------------------------------------------
def spec_of(node: dict[str, Any]) -> dict[str, Any]:
    """The node without its children: what its action stores as ``input["spec"]``."""
    return {k: v for k, v in node.items() if k != "children"}


class Node(Action, abstract=True):
    """Base of every node class: plans children, fails planning on demand, answers rescue."""

    def plan(self, node: dict[str, Any], env: dict[str, Any], planned: dict[str, Action]) -> None:
        planned[node["id"]] = self
        if node["kind"] == "leaf" and node.get("fail_plan"):
            raise PlanningError(PLANNING_FAILURE)
        if node["kind"] == "group":
            flow = self.sequence() if node["mode"] == "S" else self.concurrence()
            with flow:
                for child in node["children"]:
                    self.plan_action(class_for(child), child, env, planned)
            if node.get("fail_plan"):
                raise PlanningError(PLANNING_FAILURE)
        values: dict[str, Any] = {"node": node["id"], "spec": spec_of(node), **env}
        if node.get("ref") is not None:
            values["ref"] = planned[node["ref"]].output["value"]
        self.plan_self(values)

    def rescue_strategy_for_self(self) -> str:
        return str(self.input.get("spec", {}).get("rescue", "pause"))


def _make_class(name: str, bases: tuple[type, ...], ns: dict[str, Any]) -> type[Action]:
    ns = {"__module__": __name__, "__qualname__": name, **ns}
    cls = type(name, bases, ns)
    globals()[name] = cls
    return cls  # type: ignore[return-value]


def _sync_run_method(self: Action, event: Any = None) -> None:
    sync_run(self, event)


async def _async_run_method(self: Action, event: Any = None) -> None:
    await async_run(self, event)


def _finalize_method(self: Action) -> None:
    do_finalize(self)


CLASSES: dict[tuple[str, str | None, bool, bool, bool], type[Action]] = {}


def _class_key(node: dict[str, Any]) -> tuple[str, str | None, bool, bool, bool]:
    cancellable = node["kind"] == "leaf" and node.get("behaviour") == "cancel"
    return (
        node["kind"],
        node.get("run"),
        bool(node.get("finalize")),
        cancellable,
        bool(node.get("rerun")),
    )


def _build_classes() -> None:
    for kind in ("leaf", "group"):
        runs: tuple[str | None, ...] = ("sync", "async")
        if kind == "group":
            runs = (None, "sync", "async")
        for run in runs:
            for fin in (False, True):
                for cancellable in (False, True) if kind == "leaf" else (False,):
                    for rerun in (False, True):
                        ns: dict[str, Any] = {"rerun_on_recovery": rerun}
                        if run == "sync":
                            ns["run"] = _sync_run_method
                        elif run == "async":
                            ns["run"] = _async_run_method
                        if fin:
                            ns["finalize"] = _finalize_method
                        bases: tuple[type, ...] = (Node,)
                        if kind == "leaf":
                            bases = (Cancellable, Timeouts, Node) if cancellable else (
                                Timeouts, Node
                            )
                        name = (
                            f"{kind.capitalize()}{(run or 'norun').capitalize()}"
                            f"{'Fin' if fin else ''}{'Cancel' if cancellable else ''}"
                            f"{'Rerun' if rerun else ''}"
                        )
                        CLASSES[(kind, run, fin, cancellable, rerun)] = _make_class(
                            name, bases, ns
                        )


_build_classes()


def class_for(node: dict[str, Any]) -> type[Action]:
    return CLASSES[_class_key(node)]


def trigger_args(tree: dict[str, Any], log: str | Path, fsync: bool = False) -> tuple[Any, ...]:
    """``world.trigger(class_for(tree), *trigger_args(tree, log))``."""
    return (tree, {"log": str(log), "fsync": fsync}, {})


def walk(tree: dict[str, Any]) -> list[dict[str, Any]]:
    """The nodes of a tree in pre-order."""
    result = [tree]
    for child in tree.get("children", ()):
        result.extend(walk(child))
    return result
