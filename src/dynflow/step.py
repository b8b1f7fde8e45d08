"""Steps: one phase of one action, with its own state machine and timings (spec §2.3, §3.2)."""

from __future__ import annotations

import traceback
from datetime import datetime
from typing import Any, ClassVar

from .serialization import format_time
from .states import (
    FINALIZE_STEP_TRANSITIONS,
    PLAN_STEP_TRANSITIONS,
    RUN_STEP_TRANSITIONS,
    check_step_transition,
)


def error_hash(exc: BaseException, message: str | None = None) -> dict[str, Any]:
    return {
        "class": "Dynflow::ExecutionPlan::Steps::Error",
        "exception_class": type(exc).__name__,
        "message": message if message is not None else str(exc),
        "backtrace": [line.rstrip("\n") for line in traceback.format_tb(exc.__traceback__)][-50:],
    }


def plain_error(message: str, exception_class: str = "Dynflow::Error") -> dict[str, Any]:
    return {
        "class": "Dynflow::ExecutionPlan::Steps::Error",
        "exception_class": exception_class,
        "message": message,
        "backtrace": [],
    }


class Step:
    kind: ClassVar[str] = "Step"
    wire_class: ClassVar[str] = ""
    transitions: ClassVar[dict[str, frozenset[str]]] = {}

    __slots__ = (
        "execution_plan_id", "id", "action_id", "action_class", "state", "error", "started_at",
        "ended_at", "execution_time", "real_time", "progress_done", "progress_weight", "queue",
        "children",
    )

    def __init__(
        self,
        execution_plan_id: str,
        id: int,
        action_id: int,
        action_class: str,
        state: str = "pending",
        *,
        error: dict[str, Any] | None = None,
        started_at: datetime | None = None,
        ended_at: datetime | None = None,
        execution_time: float = 0.0,
        real_time: float = 0.0,
        progress_done: float = 0.0,
        progress_weight: float = 0.0,
        queue: str | None = None,
        children: list[int] | None = None,
    ) -> None:
        self.execution_plan_id = execution_plan_id
        self.id = id
        self.action_id = action_id
        self.action_class = action_class
        self.state = state
        self.error = error
        self.started_at = started_at
        self.ended_at = ended_at
        self.execution_time = execution_time
        self.real_time = real_time
        self.progress_done = progress_done
        self.progress_weight = progress_weight
        self.queue = queue
        self.children = children

    def set_state(self, new: str) -> None:
        check_step_transition(self.transitions, self.kind, self.state, new)
        self.state = new

    def to_hash(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "execution_plan_uuid": self.execution_plan_id,
            "id": self.id,
            "state": self.state,
            "class": self.wire_class,
            "action_class": self.action_class,
            "action_id": self.action_id,
            "error": self.error,
            "started_at": format_time(self.started_at),
            "ended_at": format_time(self.ended_at),
            "execution_time": self.execution_time,
            "real_time": self.real_time,
            "progress_done": self.progress_done,
            "progress_weight": self.progress_weight,
            "queue": self.queue,
        }
        if self.children is not None:
            data["children"] = list(self.children)
        return data

    def __repr__(self) -> str:
        return f"<{self.kind} {self.execution_plan_id}:{self.id} {self.state}>"


def step_progress(step: Step) -> float:
    """How far a step is, 0..1: done (success, skipped) 1, pending 0, else the stored value."""
    if step.state in ("success", "skipped"):
        return 1.0
    if step.state == "pending":
        return 0.0
    return min(1.0, max(0.0, step.progress_done or 0.0))


class PlanStep(Step):
    kind = "PlanStep"
    wire_class = "Dynflow::ExecutionPlan::Steps::PlanStep"
    transitions = PLAN_STEP_TRANSITIONS
    __slots__ = ()


class RunStep(Step):
    kind = "RunStep"
    wire_class = "Dynflow::ExecutionPlan::Steps::RunStep"
    transitions = RUN_STEP_TRANSITIONS
    __slots__ = ()


class FinalizeStep(Step):
    kind = "FinalizeStep"
    wire_class = "Dynflow::ExecutionPlan::Steps::FinalizeStep"
    transitions = FINALIZE_STEP_TRANSITIONS
    __slots__ = ()


STEP_CLASSES: dict[str, type[Step]] = {
    cls.wire_class: cls for cls in (PlanStep, RunStep, FinalizeStep)
}
