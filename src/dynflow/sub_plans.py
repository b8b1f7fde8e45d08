"""V2 sub-plans: an action that spawns child execution plans in batches and polls them (§1.5).

A parent action subclasses :class:`WithSubPlans` and implements

* ``async create_sub_plans()`` — trigger the children, usually one per item of
  ``self.current_batch()``, with ``await self.trigger(ChildClass, ...)`` (or
  ``world.trigger_with_options(..., caller_action=self)``); return the trigger results (a list, or
  one result; ``None`` means "count the sub-plans now in the database"),
* ``total_count()`` — how many items (children) there are in all,
* ``batch(from_, size)`` — the items ``from_ .. from_ + size - 1``;

and optionally ``batch_size()`` (100), ``polling_interval()`` (15 s), ``on_finish()``,
``on_planning_finished()`` (both may be ``async``), and ``limit_concurrency_level(n)`` (call it in
``plan``; it is stored in ``input["dynflow"]["concurrency_limit"]``).

Algorithm (the original's ``Dynflow::Action::V2::WithSubPlans``): the first ``run`` records the
total and spawns the first batch; every ``run`` then ends with "finished? else plan a ``Ping``
event (at once if there is capacity and more to spawn, else after ``polling_interval``) and
suspend". Each ``Ping`` recomputes the counts from the database and spawns the next batch when
there is room. No callback from the children is needed, so it works with any number of
processes. ``Cancel``/``Abort`` counts the never-planned items as cancelled, stops spawning and
forwards the event to the running children. The step fails with "A sub task failed" when any
child failed or anything was cancelled.

Output keys: ``total_count``, ``planned_count``, ``pending_count``, ``success_count``,
``failed_count``, ``cancelled_count`` (plus ``cancelled_timestamp`` once cancelled and
``resumed_count`` after children that failed to plan were retried).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from .action import ABORT, CANCEL, SKIP, Action
from .errors import ActionFailed
from .step import PlanStep

if TYPE_CHECKING:
    from .world import PlanningFailed, Triggered

log = logging.getLogger("dynflow.action")

PING = "Dynflow::Action::V2::WithSubPlans::Ping"
DEFAULT_BATCH_SIZE = 100
DEFAULT_POLLING_INTERVAL = 15.0

FAILED_STATES = ["paused", "stopped"]
FAILED_RESULTS = ["error", "warning"]


class SubtaskFailedException(ActionFailed):  # the original's name
    """Fails the parent step when a sub-plan failed or was cancelled."""


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


class WithSubPlans(Action, abstract=True):
    """Base class of an action that spawns and watches sub-plans (V2: batches + polling)."""

    cancellable: ClassVar[bool] = True

    # ---- to be implemented by the user --------------------------------------------------------
    async def create_sub_plans(self) -> Any:
        """Trigger the children of ``self.current_batch()`` and return the trigger results."""
        raise NotImplementedError

    def total_count(self) -> int:
        """The expected number of children in all."""
        raise NotImplementedError

    def batch(self, from_: int, size: int) -> Sequence[Any]:
        """The ``size`` items starting at index ``from_``."""
        raise NotImplementedError

    def batch_size(self) -> int:
        return DEFAULT_BATCH_SIZE

    def polling_interval(self) -> float:
        """Seconds between two polls of the children's states."""
        return DEFAULT_POLLING_INTERVAL

    def on_finish(self) -> Any:
        """Called once every child finished successfully (may be ``async``)."""
        return None

    def on_planning_finished(self) -> Any:
        """Called once every child has been planned, or planning stopped (may be ``async``)."""
        return None

    # ---- helpers for the user -----------------------------------------------------------------
    async def trigger(
        self, action_class: type[Action], *args: Any, **kwargs: Any
    ) -> Triggered | PlanningFailed:
        """Plan and start a child plan whose root action is linked to this action."""
        assert self.world is not None
        return await self.world.trigger_with_options(
            action_class, args=args, kwargs=kwargs, caller_action=self
        )

    def current_batch(self) -> Sequence[Any]:
        """The items to spawn now: the next ``batch_size`` (or free capacity) items."""
        return self.batch(self.output.get("planned_count", 0), self._next_batch_size())

    def limit_concurrency_level(self, level: int) -> None:
        """Never have more than ``level`` unfinished children at once; call it in ``plan``."""
        self._require_phase("plan")
        self.input.setdefault("dynflow", {})["concurrency_limit"] = int(level)

    def concurrency_limit(self) -> int | None:
        dynflow = self.input.get("dynflow")
        if not isinstance(dynflow, dict):
            return None
        limit = dynflow.get("concurrency_limit")
        return None if limit is None else int(limit)

    def concurrency_limit_capacity(self) -> int | None:
        """How many more children may be unfinished now (``None`` without a limit)."""
        limit = self.concurrency_limit()
        if limit is None:
            return None
        if not self.counts_set():
            return limit
        out = self.output
        running = out["planned_count"] - (out["success_count"] + out["failed_count"])
        return max(0, limit - running)

    def counts_set(self) -> bool:
        return all(
            self.output.get(key) is not None
            for key in ("total_count", "success_count", "failed_count", "pending_count")
        )

    def remaining_count(self) -> int:
        """Items not planned yet (0 once cancelled)."""
        if self.output.get("cancelled_timestamp"):
            return 0
        return int(self.output.get("total_count") or 0) - int(self.output.get("planned_count", 0))

    def can_spawn_next_batch(self) -> bool:
        return self.remaining_count() > 0

    def is_done(self) -> bool:
        if self.can_spawn_next_batch() or not self.counts_set():
            return False
        out = self.output
        finished = out["success_count"] + out["failed_count"] + out.get("cancelled_count", 0)
        return out["total_count"] - finished <= 0

    def run_progress(self) -> float:
        if not self.counts_set():
            return 0.1
        out = self.output
        total = out["total_count"]
        if total <= 0:
            return 1.0
        finished = out["success_count"] + out["failed_count"] + out.get("cancelled_count", 0)
        return min(1.0, finished / total)

    def sub_plan_filter(self) -> dict[str, Any]:
        return {"caller_execution_plan_id": self.execution_plan_id, "caller_action_id": self.id}

    async def sub_plans_count(self, **filters: Any) -> int:
        assert self.world is not None
        return await self.world.store.count_plans({**self.sub_plan_filter(), **filters})

    # ---- the run --------------------------------------------------------------------------------
    async def run(self, event: Any = None) -> None:
        if event == SKIP:
            return  # skipped: its sub-plans are left as they are
        if event is None:
            if self.output.get("total_count") is not None:
                if await self.resume():
                    # a Ping from before the restart is still stored: it keeps the polling going
                    if not await self._try_to_finish():
                        self.suspend()
                    return
            else:
                await self._initiate()
        elif event == PING:
            await self._tick()
        elif event in (CANCEL, ABORT):
            await self.cancel_sub_plans(force=event == ABORT)
            # the Ping planned by the previous run is still pending; it notices the end
            self.suspend()
        else:
            log.warning("%s ignores the unknown event %r", self.name(), event)
            self.suspend()
        if not await self._try_to_finish():
            self._suspend_and_ping()

    async def _initiate(self) -> None:
        out = self.output
        out["planned_count"] = 0
        out["cancelled_count"] = 0
        out["total_count"] = int(await _maybe_await(self.total_count()))
        await self._spawn_plans()

    async def resume(self) -> bool:
        """Continue after a restart or a manual resume; True when a Ping is already pending.
        A subclass may override it (Dynflow's ``resume``), e.g. to record the resume."""
        assert self.world is not None
        store = self.world.store
        statuses = await store.plan_statuses(self.sub_plan_filter())
        if await self._all_failed_in_planning(statuses):
            # nothing got past planning: start over (the old failures no longer count)
            out = self.output
            out["resumed_count"] = out.get("resumed_count", 0) + len(statuses)
            for key in ("total_count", "failed_count", "pending_count", "success_count"):
                out.pop(key, None)
            out.pop("cancelled_timestamp", None)
            await self._initiate()
            return False
        # children triggered by a run that crashed before saving its output still count
        existing = len(statuses) - self.output.get("resumed_count", 0)
        if existing > self.output.get("planned_count", 0):
            self.output["planned_count"] = existing
        await self._tick()
        return await self._ping_pending()

    async def _all_failed_in_planning(self, statuses: dict[str, dict[str, Any]]) -> bool:
        assert self.world is not None
        if any(s["state"] != "stopped" or s["result"] != "error" for s in statuses.values()):
            return False
        for plan_id in statuses:
            plan = await self.world.store.load_plan(plan_id, self.world, with_actions=False)
            if plan is None or not any(
                isinstance(step, PlanStep) and step.state == "error" for step in plan.steps.values()
            ):
                return False
        return True

    async def _ping_pending(self) -> bool:
        assert self.world is not None
        events = await self.world.store.planned_events_of(self.execution_plan_id)
        return any(e["step_id"] == self.run_step_id and e["event"] == PING for e in events)

    async def _tick(self) -> None:
        await self.recalculate_counts()
        if self.can_spawn_next_batch():
            await self._spawn_plans()

    def _next_batch_size(self) -> int:
        size = int(self.batch_size())
        capacity = self.concurrency_limit_capacity()
        if capacity is not None:
            size = capacity
        return max(0, min(size, self.remaining_count()))

    async def _spawn_plans(self) -> None:
        out = self.output
        if self._next_batch_size() > 0 or out["planned_count"] == 0:
            result = await self.create_sub_plans()
            if result is None:
                known = out["planned_count"] + out.get("resumed_count", 0)
                planned = max(0, await self.sub_plans_count() - known)
            elif isinstance(result, list | tuple):
                planned = len(result)
            else:
                planned = 1
        else:
            planned = 0
        out["planned_count"] += planned
        out["failed_count"] = out.get("failed_count", 0)
        out["pending_count"] = out.get("pending_count", 0) + planned
        out["success_count"] = out.get("success_count", 0)
        if not self.can_spawn_next_batch():
            await _maybe_await(self.on_planning_finished())

    async def recalculate_counts(self) -> None:
        """Recount the children's outcomes from the database."""
        out = self.output
        total = out["total_count"]
        failed_filter = {"state": FAILED_STATES, "result": FAILED_RESULTS}
        cancelled_at = out.get("cancelled_timestamp")
        if cancelled_at:
            cancelled_scheduled = await self.sub_plans_count(
                **failed_filter, ended_at_from=cancelled_at
            )
            cancelled = total - out["planned_count"] + cancelled_scheduled
        else:
            cancelled_scheduled = cancelled = 0
        failed = (
            await self.sub_plans_count(**failed_filter)
            - cancelled_scheduled
            - out.get("resumed_count", 0)
        )
        success = await self.sub_plans_count(state="stopped", result="success")
        out["failed_count"] = failed
        out["success_count"] = success
        out["cancelled_count"] = cancelled
        out["pending_count"] = max(0, total - failed - success - cancelled)

    async def _try_to_finish(self) -> bool:
        if not self.is_done():
            return False
        out = self.output
        if out["failed_count"] + out.get("cancelled_count", 0) > 0:
            raise SubtaskFailedException("A sub task failed")
        await _maybe_await(self.on_finish())
        return True

    def _suspend_and_ping(self) -> None:
        capacity = self.concurrency_limit_capacity()
        spawn_now = (capacity is None or capacity > 0) and self.can_spawn_next_batch()
        self.plan_event(PING, None if spawn_now else float(self.polling_interval()))
        self.suspend()

    # ---- cancellation ----------------------------------------------------------------------------
    async def cancel_sub_plans(self, force: bool = False) -> None:
        """Stop spawning, count unplanned items as cancelled, cancel the running children."""
        assert self.world is not None
        out = self.output
        if out.get("total_count") is None:
            return
        out["cancelled_count"] = out["total_count"] - out.get("planned_count", 0)
        first = not out.get("cancelled_timestamp")
        if first:
            # UTC, to compare with the children's ended_at in the database
            now = datetime.now(UTC)
            out["cancelled_timestamp"] = now.strftime("%Y-%m-%dT%H:%M:%S.") + (
                f"{now.microsecond // 1000:03d}Z"
            )
        if first and out["cancelled_count"] > 0:
            await _maybe_await(self.on_planning_finished())
        running = await self.world.store.plan_statuses(
            {**self.sub_plan_filter(), "state": "running"}
        )
        for plan_id in running:
            await self.world.cancel(plan_id, force)


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_POLLING_INTERVAL",
    "PING",
    "SubtaskFailedException",
    "WithSubPlans",
]
