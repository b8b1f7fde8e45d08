"""Execution plans: the persisted graph of steps from planning one root action (§1.3, §2, §3.1)."""

from __future__ import annotations

import time
import uuid as uuidlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from . import flow as flows
from . import telemetry
from .action import Action, encode_refs, referenced_steps
from .errors import NotSerializable
from .middleware import plan_phase_chain
from .serialization import dumps, format_time, utcnow
from .states import check_plan_transition, derive_result
from .step import FinalizeStep, PlanStep, RunStep, Step, error_hash, step_progress

if TYPE_CHECKING:
    from .world import World

HISTORY_NAMES = {
    "running": "start execution",
    "paused": "pause execution",
    "stopped": "finish execution",
    "scheduled": "delay",
}


class LockRequest(NamedTuple):
    """A coordinator lock planning asks for (taken when the plan is first stored)."""

    lock_class: str
    lock_id: str
    owner: str
    data: dict[str, Any]
    message: str  # the planning error if another owner holds it
    action_id: int


def _weight(method: Any) -> float:
    """A progress weight from the action (1 if its method fails or returns nonsense)."""
    try:
        value = float(method())
    except Exception:  # noqa: BLE001 - progress must never break planning
        return 1.0
    return value if value >= 0 else 1.0


class _ChildPlanningFailed(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message"))
        self.error = error


class ExecutionPlan:
    wire_class = "Dynflow::ExecutionPlan"

    def __init__(
        self,
        id: str,
        *,
        world: World | None = None,
        state: str = "pending",
        label: str | None = None,
        result: str = "pending",
        root_plan_step_id: int | None = None,
        run_flow: flows.Flow | None = None,
        finalize_flow: flows.Flow | None = None,
        step_ids: list[int] | None = None,
        started_at: datetime | None = None,
        ended_at: datetime | None = None,
        execution_time: float | None = None,
        real_time: float = 0.0,
        execution_history: list[dict[str, Any]] | None = None,
        steps: dict[int, Step] | None = None,
        actions: dict[int, Action] | None = None,
    ) -> None:
        self.id = id
        self.world = world
        self.state = state
        self.label = label
        self._result = result
        self.root_plan_step_id = root_plan_step_id
        self.run_flow: flows.Flow = run_flow if run_flow is not None else flows.Concurrence()
        self.finalize_flow: flows.Flow = (
            finalize_flow if finalize_flow is not None else flows.Sequence()
        )
        self.step_ids: list[int] = list(step_ids or [])
        self.started_at = started_at
        self.ended_at = ended_at
        self.execution_time = execution_time
        self.real_time = real_time
        self.execution_history: list[dict[str, Any]] = list(execution_history or [])
        self.steps: dict[int, Step] = steps if steps is not None else {}
        self.actions: dict[int, Action] = actions if actions is not None else {}
        # planning state
        self._next_step_id = 1
        self._next_action_id = 1
        self._run_flow_stack: list[flows.Composed] = []
        self._dependencies: dict[int, set[int]] = {}
        # A scheduled plan's delayed record: {"start_at", "start_before", "frozen"} (or None).
        self.delayed: dict[str, Any] | None = None
        # Coordinator locks planning asked for (singleton actions); taken when the plan is
        # stored, atomically: one held by another plan fails the planning (spec §1.9).
        self.lock_requests: list[LockRequest] = []
        # Why the stored plan could not be read, for a plan listed from its row alone.
        self.unreadable: str | None = None

    @classmethod
    def new(cls, world: World | None, id: str | None = None) -> ExecutionPlan:
        return cls(id or str(uuidlib.uuid4()), world=world)

    # ---- states ---------------------------------------------------------------------------
    @property
    def result(self) -> str:
        if self.steps and len(self.steps) == len(self.step_ids):
            return derive_result([s.state for s in self.steps.values()])
        return self._result

    @result.setter
    def result(self, value: str) -> None:
        self._result = value

    def set_state(self, new: str, history: str | None = None, world_id: str | None = None) -> None:
        """Move to ``new`` (checked), fill the timing fields and append the history entry."""
        check_plan_transition(self.state, new)
        old, self.state = self.state, new
        if self.world is not None and old != new:
            telemetry.plan_state_changed(self, old, new)
        now = utcnow()
        if new == "planning":
            self.started_at = now
        elif new == "stopped":
            self.ended_at = now
            if self.started_at is not None:
                self.real_time = (now - self.started_at).total_seconds()
            self.execution_time = sum(s.execution_time or 0.0 for s in self.steps.values())
        name = history or HISTORY_NAMES.get(new)
        if name:
            self.add_history(name, world_id)
        self._result = self.result

    def add_history(self, name: str, world_id: str | None = None) -> None:
        if world_id is None and self.world is not None:
            world_id = self.world.id
        self.execution_history.append(
            {"time": int(time.time()), "name": name, "world_id": world_id}
        )

    # ---- queries over the plan ---------------------------------------------------------------
    def root_action(self) -> Action | None:
        if self.root_plan_step_id is None:
            return None
        step = self.steps.get(self.root_plan_step_id)
        return self.actions.get(step.action_id) if step else None

    def planned_actions(self, action: Action) -> list[Action]:
        step = self.steps.get(action.plan_step_id)
        if step is None or not step.children:
            return []
        result = []
        for child_step_id in step.children:
            child = self.steps.get(child_step_id)
            if child is not None and child.action_id in self.actions:
                result.append(self.actions[child.action_id])
        return result

    def run_steps(self) -> list[Step]:
        return [s for s in self.steps.values() if isinstance(s, RunStep)]

    def finalize_steps(self) -> list[Step]:
        return [s for s in self.steps.values() if isinstance(s, FinalizeStep)]

    def failed_steps(self) -> list[Step]:
        return [s for s in self.steps.values() if s.state == "error"]

    def progress(self) -> float:
        """Weighted mean progress of the run and finalize steps, 0..1 (spec §2.3).

        A step counts ``progress_weight`` (set from the action's ``run_progress_weight`` /
        ``finalize_progress_weight`` at planning) times its progress: 1 when done (success or
        skipped), 0 when pending, else what the action reported (``run_progress``).
        """
        if self.state in ("pending", "scheduled", "planning"):
            return 0.0
        done = total = 0.0
        for step_id in (*self.run_flow.step_ids(), *self.finalize_flow.step_ids()):
            step = self.steps.get(step_id)
            if step is None:
                continue
            total += step.progress_weight
            done += step_progress(step) * step.progress_weight
        return 1.0 if total == 0 else done / total

    def rescue_strategy(self) -> str:
        root = self.root_action()
        strategy = root.rescue_strategy() if root is not None else None
        return strategy or "skip"

    # ---- serialisation --------------------------------------------------------------------------
    def to_hash(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "class": self.wire_class,
            "label": self.label,
            "state": self.state,
            "result": self.result,
            "root_plan_step_id": self.root_plan_step_id,
            "run_flow": self.run_flow.encode(),
            "finalize_flow": self.finalize_flow.encode(),
            "step_ids": list(self.step_ids),
            "started_at": format_time(self.started_at),
            "ended_at": format_time(self.ended_at),
            "execution_time": self.execution_time,
            "real_time": self.real_time,
            "execution_history": list(self.execution_history),
            # null when the plan was loaded without its steps (plan lists)
            "progress": round(self.progress(), 4) if self.steps or not self.step_ids else None,
        }
        if self.delayed is not None:
            data["delayed_plan"] = dict(self.delayed)
        return data

    def __repr__(self) -> str:
        return f"<ExecutionPlan {self.id} {self.state}/{self.result}>"

    # ---- planning (spec §1.3) -------------------------------------------------------------------
    def plan(
        self,
        action_class: type[Action],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        caller_action: Action | None = None,
        initial_input: dict[str, Any] | None = None,
    ) -> None:
        """Plan ``action_class`` as the root action; ends ``planned`` or ``stopped`` (on error).

        ``initial_input``: the root action's input before its ``plan`` runs (a delayed plan's
        input as its ``delay`` middleware left it; ``plan_self`` merges into it)."""
        world_id = self.world.id if self.world is not None else None
        self.set_state("planning", world_id=world_id)
        root_flow = flows.Concurrence()
        self._run_flow_stack = [root_flow]
        action = self.add_plan_step(action_class, None, caller_action)
        if initial_input:
            action.input = dict(initial_input)
        self.root_plan_step_id = action.plan_step_id
        try:
            self._plan_root(action, args, kwargs or {})
        except _ChildPlanningFailed:
            pass
        try:
            self.label = action.label
        except Exception:  # noqa: BLE001 - a broken label must not break planning
            self.label = action.name()
        self._run_flow_stack = []
        root_flow.normalise()
        self.run_flow = root_flow.children[0] if len(root_flow.children) == 1 else root_flow
        for a in self.actions.values():
            a.input = encode_refs(a.input)
            a.phase = "run"
        failed = any(s.state == "error" for s in self.steps.values())
        self.set_state("stopped" if failed else "planned", world_id=world_id)

    def _plan_root(self, action: Action, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Plan the root action inside the ``plan_phase`` middleware of its class."""

        def execute() -> None:
            self._execute_plan_step(action, args, kwargs)

        if self.world is None:
            execute()
            return
        try:
            plan_phase_chain(self.world.middleware_for(type(action)), action, execute, self)
        except _ChildPlanningFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken plan_phase middleware fails planning
            step = self.steps[action.plan_step_id]
            if step.state != "error":
                step.error = error_hash(exc)
                step.state = "error"
            assert step.error is not None
            raise _ChildPlanningFailed(step.error) from None

    # ---- the action <-> planner protocol ---------------------------------------------------------
    # What an action (``plan_self``, ``plan_action``, ``sequence``, ``concurrence``) calls on
    # the plan it is being planned into, and ``delayed.delay`` for a delayed plan's root step.

    def add_plan_step(
        self,
        action_class: type[Action],
        caller: Action | None,
        external_caller: Action | None = None,
    ) -> Action:
        """Add a plan step and a new ``action_class`` action to it, a child of ``caller`` (an
        action of this plan) or, with ``external_caller``, the root of a sub-plan of that
        action. Called by :meth:`plan` and :meth:`plan_child` before the step's planning runs,
        and by ``delayed.delay`` for a delayed plan's root step (not planned yet)."""
        step_id = self._take_step_id()
        action_id = self._next_action_id
        self._next_action_id += 1
        step = PlanStep(self.id, step_id, action_id, action_class.name(), "pending", children=[])
        self.steps[step_id] = step
        action = action_class(
            world=self.world,
            execution_plan_id=self.id,
            id=action_id,
            plan_step_id=step_id,
            caller_execution_plan_id=external_caller.execution_plan_id if external_caller else None,
            caller_action_id=(
                external_caller.id if external_caller else (caller.id if caller else None)
            ),
        )
        action.execution_plan = self
        action.triggering_action = caller
        self.actions[action_id] = action
        if caller is not None:
            parent = self.steps[caller.plan_step_id]
            assert parent.children is not None
            parent.children.append(step_id)
        return action

    def _take_step_id(self) -> int:
        step_id = self._next_step_id
        self._next_step_id += 1
        self.step_ids.append(step_id)
        return step_id

    def _execute_plan_step(
        self, action: Action, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        step = self.steps[action.plan_step_id]
        step.set_state("running")
        started = time.monotonic()
        step.started_at = utcnow()
        try:
            subscribed = (
                self.world.subscribed_actions(type(action)) if self.world is not None else []
            )
            with self.switch_flow("C"):
                if not subscribed:
                    self._call_plan(action, args, kwargs)
                else:
                    # The action's own flow and those of its subscribers run concurrently.
                    with self.switch_flow("C"):
                        self._call_plan(action, args, kwargs)
                    for subscriber_class in subscribed:
                        subscriber = self.add_plan_step(subscriber_class, action)
                        subscriber.from_subscription = True
                        self._execute_plan_step(subscriber, args, kwargs)
            try:
                dumps(encode_refs(action.input))
            except NotSerializable as exc:
                action.input = {"not_serializable": True}
                raise NotSerializable(
                    f"input of {action.name()} is not serialisable: {exc}"
                ) from exc
            step.set_state("success")
        except _ChildPlanningFailed as exc:
            step.error = exc.error
            step.set_state("error")
            raise
        except Exception as exc:  # noqa: BLE001 - any planning error fails the plan, not the caller
            step.error = error_hash(exc)
            step.set_state("error")
            if self.world is not None:
                self.world.logger.warning("planning of %s failed: %s", action.name(), exc)
            raise _ChildPlanningFailed(step.error) from None
        finally:
            step.ended_at = utcnow()
            step.execution_time = time.monotonic() - started
            step.real_time = step.execution_time
            if self.world is not None:
                telemetry.step_executed(
                    action.name(), "plan", step.execution_time,
                    step.real_time if step.state == "success" else None,
                )

    def _call_plan(self, action: Action, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        chain = self.world.middleware_for(type(action)) if self.world is not None else []
        if not chain:
            action.plan(*args, **kwargs)
            return

        def call(index: int, a: tuple[Any, ...], k: dict[str, Any]) -> None:
            if index == len(chain):
                action.plan(*a, **k)
                return
            chain[index].plan(action, lambda *a2, **k2: call(index + 1, a2, k2), *a, **k)

        call(0, args, kwargs)

    def plan_child(
        self,
        caller: Action,
        action_class: type[Action],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Action:
        """Plan a child of ``caller`` now, depth first: its plan step, then its ``plan(*args,
        **kwargs)`` (and its subscribers'). Called by ``Action.plan_action`` while ``caller``
        plans; a child's planning error fails the plan steps up to the root."""
        action = self.add_plan_step(action_class, caller)
        self._execute_plan_step(action, args, kwargs)
        return action

    @contextmanager
    def switch_flow(self, kind: str) -> Iterator[None]:
        """Inside the block, run steps added go into a new ``"S"`` (sequence) or ``"C"``
        (concurrence) flow, added to the enclosing flow when the block ends. Called by
        ``Action.sequence`` / ``Action.concurrence`` while planning (and by the plan itself
        around each plan step)."""
        new_flow: flows.Composed = flows.Sequence() if kind == "S" else flows.Concurrence()
        self._run_flow_stack.append(new_flow)
        try:
            yield
        finally:
            self._run_flow_stack.pop()
            if self._run_flow_stack:
                self._run_flow_stack[-1].add_and_resolve(self._required, new_flow)

    def _required(self, step_id: int) -> set[int]:
        return self._dependencies.get(step_id, set())

    def _queue_of(self, action: Action) -> str:
        """The queue of an action's steps: its class's, else its nearest caller's."""
        queue = action.queue
        if queue is None:
            caller = action.triggering_action
            while caller is not None and queue is None:
                queue = caller.queue
                caller = caller.triggering_action
        return queue or "default"

    def add_run_step(self, action: Action) -> int:
        """Add the run step of ``action`` to the current run flow, after the steps whose output
        its input refers to; returns the step's id. Called by ``Action.plan_self`` (once, for
        an action with ``run``), with the input planned so far."""
        step_id = self._take_step_id()
        self.steps[step_id] = RunStep(
            self.id, step_id, action.id, action.name(), "pending", queue=self._queue_of(action),
            progress_weight=_weight(action.run_progress_weight),
        )
        self._dependencies[step_id] = set(referenced_steps(action.input))
        self._run_flow_stack[-1].add_and_resolve(self._required, flows.Atom(step_id))
        return step_id

    def add_finalize_step(self, action: Action) -> int:
        """Append the finalize step of ``action`` to the finalize flow; returns the step's id.
        Called by ``Action.plan_self`` (once, for an action with ``finalize``), after
        :meth:`add_run_step`."""
        step_id = self._take_step_id()
        self.steps[step_id] = FinalizeStep(
            self.id, step_id, action.id, action.name(), "pending", queue=self._queue_of(action),
            progress_weight=_weight(action.finalize_progress_weight),
        )
        assert isinstance(self.finalize_flow, flows.Sequence)
        self.finalize_flow.append(flows.Atom(step_id))
        return step_id
