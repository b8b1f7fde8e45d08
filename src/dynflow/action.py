"""Actions: the unit of work a plugin author writes (spec §1.2).

An ``Action`` subclass defines ``plan(...)`` and optionally ``run(event=None)`` and ``finalize()``.
``run`` and ``finalize`` may be ``async def`` (they run on the event loop) or plain ``def``
(they run in the queue's bounded thread pool).
"""

from __future__ import annotations

import inspect
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import ActionFailed, PlanningError, UnknownActionClass
from .middleware import MiddlewareRules
from .rescue import combine_strategies
from .serializers import ArgsSerializer, DelayOptions, JsonArgs

if TYPE_CHECKING:
    from .execution_plan import ExecutionPlan
    from .world import World

REFERENCE_CLASS = "Dynflow::ExecutionPlan::OutputReference"

# Built-in events. Events are JSON values; these are plain strings so they survive the store.
CANCEL = "Dynflow::Action::Cancellable::Cancel"
ABORT = "Dynflow::Action::Cancellable::Abort"
POLL = "Dynflow::Action::Polling::Poll"
TIMEOUT = "Dynflow::Action::Timeouts::Timeout"
SKIP = "Dynflow::Action::Skip"


class OutputReference:
    """A reference to (a sub-key of) another action's future output, resolved at run time."""

    __slots__ = ("execution_plan_id", "step_id", "action_id", "subkeys")

    def __init__(
        self, execution_plan_id: str, step_id: int, action_id: int, subkeys: tuple[str, ...] = ()
    ) -> None:
        self.execution_plan_id = execution_plan_id
        self.step_id = step_id
        self.action_id = action_id
        self.subkeys = tuple(subkeys)

    def __getitem__(self, key: str) -> OutputReference:
        return OutputReference(
            self.execution_plan_id, self.step_id, self.action_id, (*self.subkeys, str(key))
        )

    def to_hash(self) -> dict[str, Any]:
        return {
            "class": REFERENCE_CLASS,
            "execution_plan_id": self.execution_plan_id,
            "step_id": self.step_id,
            "action_id": self.action_id,
            "subkeys": list(self.subkeys),
        }

    def __repr__(self) -> str:
        keys = "".join(f"[:{k}]" for k in self.subkeys)
        return f"Step({self.step_id}).output{keys}"

    def resolve(self, output: dict[str, Any]) -> Any:
        value: Any = output
        for key in self.subkeys:
            value = value.get(key) if isinstance(value, dict) else None
        return value


def is_reference(value: Any) -> bool:
    return isinstance(value, dict) and value.get("class") == REFERENCE_CLASS


def encode_refs(value: Any) -> Any:
    """Turn ``OutputReference`` objects inside a value into their stored hashes."""
    if isinstance(value, OutputReference):
        return value.to_hash()
    if isinstance(value, dict):
        return {k: encode_refs(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode_refs(v) for v in value]
    return value


def referenced_steps(value: Any) -> Iterator[int]:
    """Step ids of every output reference (object or stored hash) inside a value."""
    if isinstance(value, OutputReference):
        yield value.step_id
    elif is_reference(value):
        yield int(value["step_id"])
    elif isinstance(value, dict):
        for v in value.values():
            yield from referenced_steps(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from referenced_steps(v)


def dereference(value: Any, outputs: Callable[[int], dict[str, Any]]) -> Any:
    """Replace stored reference hashes with the referenced output values."""
    if is_reference(value):
        ref = OutputReference(
            value["execution_plan_id"], value["step_id"], value["action_id"], value["subkeys"]
        )
        return ref.resolve(outputs(ref.action_id))
    if isinstance(value, dict):
        return {k: dereference(v, outputs) for k, v in value.items()}
    if isinstance(value, list):
        return [dereference(v, outputs) for v in value]
    return value


class Suspend(BaseException):  # control flow, not an error
    """Raised by ``Action.suspend()`` to leave ``run`` with the step suspended."""


class SuspendedHandle:
    """What outside code needs to wake a suspended action: its plan and run step."""

    def __init__(self, world: World, execution_plan_id: str, step_id: int) -> None:
        self.world = world
        self.execution_plan_id = execution_plan_id
        self.step_id = step_id

    async def event(self, event: Any) -> None:
        await self.world.event(self.execution_plan_id, self.step_id, event)

    async def plan_event(self, event: Any, delay_seconds: float) -> None:
        await self.world.plan_event(self.execution_plan_id, self.step_id, event, delay_seconds)


_registry: dict[str, type[Action]] = {}
_registry_generation = 0  # bumped by every registration (the subscription index follows it)


def register(cls: type[Action], *names: str) -> None:
    """Make ``cls`` loadable under its own name and every alias in ``names``."""
    global _registry_generation
    for name in (cls.name(), *names):
        _registry[name] = cls
    _registry_generation += 1


def registry_generation() -> int:
    return _registry_generation


def lookup(name: str) -> type[Action]:
    try:
        return _registry[name]
    except KeyError:
        raise UnknownActionClass(f"action class {name!r} is not registered") from None


def registered() -> dict[str, type[Action]]:
    return dict(_registry)


class PlannedEvent:
    __slots__ = ("execution_plan_id", "step_id", "event", "delay", "optional")

    def __init__(
        self, execution_plan_id: str, step_id: int, event: Any, delay: float | None, optional: bool
    ) -> None:
        self.execution_plan_id = execution_plan_id
        self.step_id = step_id
        self.event = event
        self.delay = delay
        self.optional = optional


class Action:
    """Base class of every action.

    Class attributes a subclass may set:

    * ``queue``: the executor queue of its run/finalize steps (default: ``"default"``).
    * ``wire_names``: extra names it is registered under (e.g. the Ruby class name).
    * ``execution_plan_hooks``: ``{state_or_success_or_failure: [method names]}``.
    * ``middleware``: middleware wrapped around this action's phases: a list of classes,
      ``use(M, before=..., after=..., replace=...)`` and ``do_not_use(M)`` entries
      (``dynflow.middleware``); afterwards ``MyAction.middleware`` is the class's own
      ``MiddlewareRules`` (``MyAction.middleware.use(M, ...)``). Inherited by subclasses.
    * ``subscribe``: action classes (or registered names) this action subscribes to: whenever
      one of them is planned, this action is planned too, in the same plan, after it (spec
      §1.3). May also be a classmethod returning them.
    * ``rerun_on_recovery``: what recovery does with this action's run step when the world
      that ran it died while the step was ``running`` (spec §5.4). False (Dynflow's way): the
      step fails with "Abnormal termination" and the rescue strategy decides. True: the step
      is put back to ``suspended`` and runs again with no event, like a suspended step; for
      actions whose ``run`` can find out what the interrupted run did (a runner that
      re-attaches to its job, a callback Foreman accepts twice, children spawned by id).
    """

    queue: ClassVar[str | None] = None
    wire_names: ClassVar[tuple[str, ...]] = ()
    execution_plan_hooks: ClassVar[dict[str, list[str]]] = {}
    middleware: ClassVar[MiddlewareRules] = MiddlewareRules()
    subscribe: ClassVar[Any] = ()
    cancellable: ClassVar[bool] = False
    rerun_on_recovery: ClassVar[bool] = False
    abstract: ClassVar[bool] = True

    def __init_subclass__(cls, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.abstract = abstract
        own = cls.__dict__.get("middleware")
        if not isinstance(own, MiddlewareRules):
            # Every class gets its own rules, so ``Sub.middleware.use(...)`` leaves its bases be.
            cls.middleware = MiddlewareRules(own or ())
        if not abstract:
            register(cls, *cls.__dict__.get("wire_names", ()))

    # ---- identity -------------------------------------------------------------------------
    @classmethod
    def name(cls) -> str:
        return f"{cls.__module__}.{cls.__qualname__}"

    @classmethod
    def subscriptions(cls) -> list[type[Action]]:
        """The action classes whose planning plans this one too (from ``subscribe``)."""
        value = cls.subscribe
        if callable(value) and not isinstance(value, type):
            value = value()
        if value is None:
            return []
        items = value if isinstance(value, list | tuple | set | frozenset) else [value]
        return [lookup(item) if isinstance(item, str) else item for item in items]

    @classmethod
    def has_run(cls) -> bool:
        return callable(getattr(cls, "run", None))

    @classmethod
    def has_finalize(cls) -> bool:
        return callable(getattr(cls, "finalize", None))

    @classmethod
    def run_accepts_event(cls) -> bool:
        run = getattr(cls, "run", None)
        if run is None:
            return False
        params = list(inspect.signature(run).parameters.values())[1:]
        return bool(params)

    def __init__(
        self,
        *,
        world: World | None,
        execution_plan_id: str,
        id: int,
        plan_step_id: int,
        run_step_id: int | None = None,
        finalize_step_id: int | None = None,
        caller_execution_plan_id: str | None = None,
        caller_action_id: int | None = None,
        input: dict[str, Any] | None = None,
        output: dict[str, Any] | None = None,
        phase: str = "plan",
    ) -> None:
        self.world = world
        self.execution_plan_id = execution_plan_id
        self.id = id
        self.plan_step_id = plan_step_id
        self.run_step_id = run_step_id
        self.finalize_step_id = finalize_step_id
        self.caller_execution_plan_id = caller_execution_plan_id
        self.caller_action_id = caller_action_id
        self.input: dict[str, Any] = dict(input or {})
        self._output: dict[str, Any] = dict(output or {})
        self.phase = phase
        self.execution_plan: ExecutionPlan | None = None
        self.triggering_action: Action | None = None
        self.from_subscription = False
        self.state: str | None = None
        self._planned_self = False
        self._planned_events: list[PlannedEvent] = []
        self._chunks: list[dict[str, Any]] = []
        self._drop_chunks = False
        self._progress: float | None = None
        # change_stored_input: applied when the run step is saved, then written with it.
        self._input_changes: list[Callable[[dict[str, Any]], dict[str, Any]]] = []
        self._input_changed = False

    # ---- plan phase -----------------------------------------------------------------------
    def plan(self, *args: Any, **kwargs: Any) -> None:
        """Default planning: the arguments become the input (a dict positional or keywords).

        Planned because of a subscription, the input is the triggering action's input.
        """
        if self.from_subscription and self.triggering_action is not None:
            self.plan_self({**self.input, **self.triggering_action.input})
            return
        data: dict[str, Any] = {}
        for arg in args:
            if not isinstance(arg, dict):
                raise PlanningError(
                    f"{self.name()}.plan got a positional {type(arg).__name__}; "
                    "pass keywords or override plan()"
                )
            data.update(arg)
        data.update(kwargs)
        self.plan_self(**data)

    def _require_phase(self, *phases: str) -> None:
        if self.phase not in phases:
            raise PlanningError(
                f"only allowed in the {' or '.join(phases)} phase, not {self.phase}"
            )

    def plan_self(self, input: dict[str, Any] | None = None, /, **values: Any) -> Action:
        """Merge values into the input and schedule this action's run and finalize steps."""
        self._require_phase("plan")
        if input:
            self.input.update(input)
        self.input.update(values)
        plan = self.execution_plan
        assert plan is not None
        if not self._planned_self:
            self._planned_self = True
            if self.has_run():
                self.run_step_id = plan.add_run_step(self)
            if self.has_finalize():
                self.finalize_step_id = plan.add_finalize_step(self)
        return self

    def plan_action(self, action_class: type[Action], *args: Any, **kwargs: Any) -> Action:
        """Plan a child action now (depth first); its ``output[...]`` is a reference."""
        self._require_phase("plan")
        assert self.execution_plan is not None
        return self.execution_plan.plan_child(self, action_class, args, kwargs)

    @contextmanager
    def sequence(self) -> Iterator[None]:
        assert self.execution_plan is not None
        with self.execution_plan.switch_flow("S"):
            yield

    @contextmanager
    def concurrence(self) -> Iterator[None]:
        assert self.execution_plan is not None
        with self.execution_plan.switch_flow("C"):
            yield

    @property
    def output(self) -> Any:
        if self.phase == "plan":
            if not self._planned_self or self.run_step_id is None:
                raise PlanningError(
                    f"{self.name()}: output is only known after plan_self() of an action with run()"
                )
            return OutputReference(self.execution_plan_id, self.run_step_id, self.id)
        return self._output

    @output.setter
    def output(self, value: dict[str, Any]) -> None:
        self._require_phase("run")
        self._output = dict(value)

    # ---- the action <-> executor protocol ------------------------------------------------------
    # What the executor (``PlanRun``) reads from an action and hands back to it while running its
    # run and finalize steps and saving them. Plugin code uses the hooks and helpers above
    # (``output``, ``plan_event``, ``output_chunk``, ``drop_output_chunks``,
    # ``change_stored_input``) instead.

    @property
    def output_data(self) -> dict[str, Any]:
        """The output as a value, whatever the phase (where ``output`` is a reference while
        planning). Read by the executor to resolve other actions' output references and to
        check the output is serialisable after a run, and by the store to save it."""
        return self._output

    @property
    def planned_events(self) -> tuple[PlannedEvent, ...]:
        """The events ``plan_event`` collected during the current run, in order. Read by the
        executor after the run, to store them with the step's save and arm them after it."""
        return tuple(self._planned_events)

    def clear_planned_events(self) -> None:
        """Forget the collected events: called by the executor when a run starts and once the
        events of the run are armed (after the step's save)."""
        self._planned_events = []

    @property
    def pending_output_chunks(self) -> list[dict[str, Any]]:
        """The chunks ``output_chunk`` appended since the last save (``chunk``, ``kind``,
        ``timestamp``). Read by the executor to write them with the step's save."""
        return self._chunks

    def clear_pending_output_chunks(self) -> None:
        """Forget the pending chunks: called by the executor once they are saved (a run step)
        or added to the statements of the finalize phase (a finalize step)."""
        self._chunks = []

    def take_output_chunks_drop(self) -> bool:
        """Whether ``drop_output_chunks`` was called since the last save; true once. Called by
        the executor building a step's save, which then deletes the stored chunks first."""
        drop, self._drop_chunks = self._drop_chunks, False
        return drop

    def take_stored_input_changes(self) -> list[Callable[[dict[str, Any]], dict[str, Any]]]:
        """The ``change_stored_input`` requests of the current run, in order; forgets them.
        Called by the executor after the run, which applies them to the input."""
        changes, self._input_changes = self._input_changes, []
        return changes

    def mark_input_changed(self) -> None:
        """Called by the executor when the action's input differs from the stored one (its
        output references were resolved, or ``change_stored_input`` rewrote it): the next save
        of a run or finalize step writes the input too."""
        self._input_changed = True

    def take_input_changed(self) -> bool:
        """Whether the input must be written with this save; true once after
        ``mark_input_changed``. Called by the executor building the save of the action."""
        changed, self._input_changed = self._input_changed, False
        return changed

    @property
    def label(self) -> str:
        return self.name()

    # ---- run phase ------------------------------------------------------------------------
    def suspend(self, callback: Callable[[SuspendedHandle], Any] | None = None) -> None:
        """Leave ``run`` now; the step waits, holding no thread, until an event arrives."""
        self._require_phase("run")
        if callback is not None:
            assert self.world is not None and self.run_step_id is not None
            callback(SuspendedHandle(self.world, self.execution_plan_id, self.run_step_id))
        raise Suspend()

    def fail(self, message: str | BaseException) -> None:
        """Fail the current step with a message (the original's ``error!``)."""
        if isinstance(message, BaseException):
            raise message
        raise ActionFailed(message)

    def plan_event(
        self,
        event: Any,
        delay_seconds: float | None = None,
        *,
        execution_plan_id: str | None = None,
        step_id: int | None = None,
        optional: bool = False,
    ) -> None:
        """Send an event (to this step by default), after ``delay_seconds`` if given.

        Events are collected and sent once the current step execution has been saved; delayed
        events are stored, so they are delivered even if the process restarts in between.
        """
        target_step = step_id if step_id is not None else self.run_step_id
        if target_step is None:
            raise PlanningError(f"{self.name()} has no run step to send an event to")
        self._planned_events.append(
            PlannedEvent(
                execution_plan_id or self.execution_plan_id,
                target_step,
                event,
                delay_seconds,
                optional,
            )
        )

    def output_chunk(
        self, chunk: Any, kind: str | None = None, timestamp: float | None = None
    ) -> None:
        """Append a piece of incremental output, stored when the step execution is saved."""
        self._chunks.append(
            {
                "chunk": chunk,
                "kind": kind,
                "timestamp": time.time() if timestamp is None else timestamp,
            }
        )

    def drop_output_chunks(self) -> None:
        """Forget this action's output chunks (stored ones and those not saved yet) when the
        step is saved: e.g. once their content is aggregated into the output."""
        self._chunks = []
        self._drop_chunks = True

    def change_stored_input(self, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """Rewrite this action's stored input when the current run step is saved, in the same
        transaction as its output: ``change`` gets the input as it is stored after the run
        (output references resolved, as Dynflow stores it) and returns the new one. For
        forgetting what the action no longer needs, e.g. the passwords of a job once its exit
        status is stored. ``self.input`` keeps its value
        until the run returns; later runs and loads see the new input."""
        self._require_phase("run")
        self._input_changes.append(change)

    def run_progress(self) -> float:
        return 0.5

    def run_progress_weight(self) -> float:
        return 1.0

    def finalize_progress(self) -> float:
        return 0.5

    def finalize_progress_weight(self) -> float:
        return 1.0

    def humanized_state(self) -> str:
        return self.state or "pending"

    # ---- delay (spec §1.8) -----------------------------------------------------------------
    def delay(self, delay_options: DelayOptions, *args: Any, **kwargs: Any) -> ArgsSerializer:
        """Called when a plan of this action is delayed, with the arguments ``plan`` will get;
        returns the serializer that stores them until then (default: ``JsonArgs``, the
        arguments as JSON values). Override it to store, say, ids instead of objects."""
        return JsonArgs(args, kwargs)

    # ---- rescue (spec §1.6) ----------------------------------------------------------------
    def rescue_strategy_for_self(self) -> str:
        return "pause"

    def rescue_strategy_for_planned_action(self, action: Action) -> str | None:
        return action.rescue_strategy()

    def rescue_strategy(self) -> str | None:
        plan = self.execution_plan
        assert plan is not None
        suggestions: list[str] = []
        if any(
            s is not None and plan.steps[s].state == "error"
            for s in (self.plan_step_id, self.run_step_id, self.finalize_step_id)
        ):
            suggestions.append(self.rescue_strategy_for_self())
        for child in plan.planned_actions(self):
            suggestion = self.rescue_strategy_for_planned_action(child)
            if suggestion is not None:
                suggestions.append(suggestion)
        return combine_strategies(suggestions)

    # ---- presentation ------------------------------------------------------------------------
    def to_hash(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "class": self.name(),
            "execution_plan_id": self.execution_plan_id,
            "id": self.id,
            "plan_step_id": self.plan_step_id,
            "run_step_id": self.run_step_id,
            "finalize_step_id": self.finalize_step_id,
            "caller_execution_plan_id": self.caller_execution_plan_id,
            "caller_action_id": self.caller_action_id,
            "input": encode_refs(self.input),
        }
        if self.phase != "plan":
            data["output"] = self._output
        return data

    @property
    def is_root(self) -> bool:
        """No caller, or a caller in another plan (the root of a sub-plan)."""
        return self.caller_action_id is None or self.caller_execution_plan_id is not None

    def __repr__(self) -> str:
        return f"<{self.name()} {self.execution_plan_id}:{self.id}>"


class MissingAction(Action, abstract=True):
    """Stands in for a persisted action whose class is not registered; loading never crashes."""

    missing_name = "?"

    @classmethod
    def name(cls) -> str:
        return cls.missing_name

    def plan(self, *args: Any, **kwargs: Any) -> None:
        raise UnknownActionClass(f"action class was not found: {self.missing_name}")

    def run(self, event: Any = None) -> None:
        if event == SKIP:
            return  # a step of a class that is gone can still be skipped
        raise UnknownActionClass(f"action class was not found: {self.missing_name}")

    def finalize(self) -> None:
        raise UnknownActionClass(f"action class was not found: {self.missing_name}")


def resolve_class(name: str) -> type[Action]:
    try:
        return lookup(name)
    except UnknownActionClass:
        return types.new_class(
            "MissingAction",
            (MissingAction,),
            {"abstract": True},
            lambda ns: ns.update({"missing_name": name}),
        )
