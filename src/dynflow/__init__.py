"""Dynflow for Python: durable workflow engine (actions, flows, execution plans, executor)."""

from .action import ABORT, CANCEL, POLL, SKIP, TIMEOUT, Action, OutputReference, SuspendedHandle
from .cancellable import Cancellable
from .delayed import Scheduled
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
from .middleware import Middleware, MiddlewareCycle, MiddlewareRules
from .polling import Polling
from .serializers import ArgsSerializer, DelayOptions, JsonArgs
from .singleton import Singleton
from .sub_plans import WithSubPlans
from .timeouts import Timeouts
from .world import PlanningFailed, Triggered, World, WorldConfig

__all__ = [
    "ABORT",
    "CANCEL",
    "POLL",
    "SKIP",
    "TIMEOUT",
    "Action",
    "ArgsSerializer",
    "Cancellable",
    "DelayOptions",
    "DynflowError",
    "EventRejected",
    "ExecutionPlan",
    "ExecutionRejected",
    "IllegalTransition",
    "JsonArgs",
    "Middleware",
    "MiddlewareCycle",
    "MiddlewareRules",
    "NotSerializable",
    "OutputReference",
    "PlanNotFound",
    "PlanningFailed",
    "Polling",
    "Scheduled",
    "Singleton",
    "SuspendedHandle",
    "Timeouts",
    "Triggered",
    "UnknownActionClass",
    "WithSubPlans",
    "World",
    "WorldConfig",
]
