"""Exceptions of the engine."""

from __future__ import annotations


class DynflowError(Exception):
    """Base of every error the engine raises on purpose."""


class IllegalTransition(DynflowError):
    """A plan or step was asked to move to a state its state machine does not allow."""


class PlanningError(DynflowError):
    """Planning of an action failed."""


class NotSerializable(DynflowError):
    """An input, output or event is not a JSON value."""


class UnknownActionClass(DynflowError):
    """A persisted action names a class that is not registered."""


class ExecutionRejected(DynflowError):
    """A plan could not be executed (not found, stopped, already running, ...)."""


class EventRejected(DynflowError):
    """An event could not be delivered to its step."""


class PlanNotFound(DynflowError):
    """No execution plan with that id."""


class PlanUnreadable(DynflowError):
    """The stored data of an execution plan cannot be read (e.g. edited by hand, or written by
    an incompatible version); the rows are left as they are."""


class ActionFailed(DynflowError):
    """Raised by ``Action.error()`` to fail the current step with a message."""
