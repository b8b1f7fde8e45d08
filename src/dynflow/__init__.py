"""Dynflow for Python: durable workflow engine (actions, flows, execution plans, executor)."""

from .action import ABORT, CANCEL, POLL, SKIP, TIMEOUT, Action, OutputReference, SuspendedHandle
from .errors import (
    DynflowError,
    EventRejected,
    ExecutionRejected,
    IllegalTransition,
    NotSerializable,
    PlanNotFound,
    UnknownActionClass,
)
from .execution_plan import ExecutionPlan

__all__ = [
    "ABORT",
    "CANCEL",
    "POLL",
    "SKIP",
    "TIMEOUT",
    "Action",
    "DynflowError",
    "EventRejected",
    "ExecutionPlan",
    "ExecutionRejected",
    "IllegalTransition",
    "NotSerializable",
    "OutputReference",
    "PlanNotFound",
    "SuspendedHandle",
    "UnknownActionClass",
]

from .world import PlanningFailed, Triggered, World, WorldConfig

__all__ += ["PlanningFailed", "Triggered", "World", "WorldConfig"]

from .delayed import ArgsSerializer, DelayOptions, JsonArgs, Scheduled  # noqa: E402

__all__ += ["ArgsSerializer", "DelayOptions", "JsonArgs", "Scheduled"]

from .cancellable import Cancellable  # noqa: E402
from .polling import Polling  # noqa: E402
from .timeouts import Timeouts  # noqa: E402

__all__ += ["Cancellable", "Polling", "Timeouts"]

from .sub_plans import WithSubPlans  # noqa: E402

__all__ += ["WithSubPlans"]

from .middleware import Middleware, MiddlewareCycle, MiddlewareRules  # noqa: E402
from .singleton import Singleton  # noqa: E402

__all__ += ["Middleware", "MiddlewareCycle", "MiddlewareRules", "Singleton"]
