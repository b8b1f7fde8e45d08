"""Actions for the Polling, Cancellable and Timeouts tests (after the original action_test).

A fake ``ExternalService`` stands for the remote system a polling action watches; each test
registers its own under a key that goes into the action's input, so the service survives a
world restart within the test.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

from dynflow import TIMEOUT, Cancellable, Polling, Timeouts
from tests.support.waiting import wait_for

SERVICES: dict[str, ExternalService] = {}


class ExternalService:
    """A remote task whose progress grows by 10 on every poll."""

    def __init__(self, goal: int = 100) -> None:
        self.goal = goal  # progress at which the task is done
        self.invocations = 0
        self.polls = 0
        self.failing_polls: set[int] = set()  # numbers (1-based) of the polls that raise
        self.failing = False  # every poll raises (until the next invoke)
        self.stuck = False  # polls report no progress
        self.cancelled: list[str] = []
        self.state: dict[str, Any] = {}
        self.threads: set[str] = set()  # names of the threads that called the service

    def register(self) -> str:
        key = str(uuid.uuid4())
        SERVICES[key] = self
        return key

    def invoke(self) -> dict[str, Any]:
        self.invocations += 1
        self.threads.add(threading.current_thread().name)
        self.failing = False
        self.state = {"task_id": 100 + self.invocations, "progress": 0}
        return dict(self.state)

    def poll(self, task_id: int) -> dict[str, Any]:
        assert task_id == self.state["task_id"], "polled a task that is not the current one"
        self.polls += 1
        self.threads.add(threading.current_thread().name)
        if self.failing or self.polls in self.failing_polls:
            raise RuntimeError("service unavailable")
        if not self.stuck:
            self.state["progress"] += 10
        return dict(self.state)


def service_of(action: Any) -> ExternalService:
    return SERVICES[action.input["service"]]


class PollingJob(Polling):
    """Plain (sync) user methods."""

    poll_intervals = (0.01,)

    def invoke_external_task(self) -> dict[str, Any]:
        return service_of(self).invoke()

    def poll_external_task(self) -> dict[str, Any]:
        return service_of(self).poll(self.external_task["task_id"])

    def done(self) -> bool:
        return self.external_task["progress"] >= service_of(self).goal

    def on_finish(self) -> None:
        self.output["finished"] = True


class AsyncPollingJob(Polling):
    """``async def`` user methods."""

    poll_intervals = (0.01,)

    async def invoke_external_task(self) -> dict[str, Any]:
        await asyncio.sleep(0)
        return service_of(self).invoke()

    async def poll_external_task(self) -> dict[str, Any]:
        await asyncio.sleep(0)
        return service_of(self).poll(self.external_task["task_id"])

    async def done(self) -> bool:
        return self.external_task["progress"] >= service_of(self).goal

    async def on_finish(self) -> None:
        self.output["finished"] = True


class SlowPollingJob(PollingJob):
    """Polls only after 30 s: the test drives it (restart, explicit POLL events)."""

    poll_intervals = (30.0,)


class StrictSlowPollingJob(SlowPollingJob):
    """Tolerates no poll failure, so a failing poll on resume makes it invoke a new task."""

    poll_max_retries = 0


class GrowingIntervalsJob(PollingJob):
    """Records every interval it waits, to show the growth."""

    poll_intervals = (0.01, 0.02, 0.03)
    poll_attempts_before_next_interval = 2

    def poll_interval(self) -> float:
        interval = super().poll_interval()
        self.output.setdefault("intervals", []).append(interval)
        return interval


class TimingOutJob(PollingJob):
    """Polls a task that never progresses; gives up after 0.75 s (polls every 0.3 s)."""

    poll_intervals = (0.3,)

    def invoke_external_task(self) -> dict[str, Any]:
        self.schedule_timeout(0.75)
        return super().invoke_external_task()

    async def run(self, event: Any = None) -> None:
        self.output.setdefault("events", []).append(event)
        await super().run(event)


class CancellablePollingJob(Cancellable, SlowPollingJob):
    def cancel_action(self) -> None:
        service_of(self).cancelled.append(self.external_task["task_id"])
        self.output["cancelled"] = True


# ---- Cancellable ----------------------------------------------------------------------------


class CancellableWaiting(Cancellable):
    """Plain run: suspends until cancelled (fails) or aborted (finishes)."""

    def run(self, event: Any = None) -> None:
        if self.handle_cancel_event(event):
            return
        self.output.setdefault("events", []).append(event)
        self.suspend()

    def cancel_action(self) -> None:
        self.output["cancelled"] = True
        self.fail("cancelled by the user")

    def abort_action(self) -> None:
        self.output["aborted"] = True


class CancelOnlyWaiting(Cancellable):
    """No abort_action: aborting falls back to cancel_action."""

    def run(self, event: Any = None) -> None:
        if self.handle_cancel_event(event):
            return
        self.suspend()

    def cancel_action(self) -> None:
        self.output["cancelled"] = True
        self.fail("cancelled by the user")


class AsyncCancellableWaiting(Cancellable):
    """Async run and async cancel_action; the default abort_action delegates to it."""

    async def run(self, event: Any = None) -> None:
        if await self.handle_cancel_event_async(event):
            return
        self.suspend()

    async def cancel_action(self) -> None:
        await asyncio.sleep(0)
        self.output["cancelled_with"] = "async"


class SyncRunAsyncCancel(Cancellable):
    """A plain run cannot wait for an async cancel_action: the step fails with TypeError."""

    def run(self, event: Any = None) -> None:
        if self.handle_cancel_event(event):
            return
        self.suspend()

    async def cancel_action(self) -> None:
        self.output["never"] = True


# ---- Timeouts --------------------------------------------------------------------------------


class WaitingWithTimeout(Timeouts):
    """Waits for a ``{"finish": true}`` event, at most ``input["timeout"]`` seconds."""

    def run(self, event: Any = None) -> None:
        if event is None:
            self.schedule_timeout(self.input["timeout"], optional=self.input.get("optional", False))
            self.suspend()
        if event == TIMEOUT:
            self.output["timed_out"] = True
            self.process_timeout()
        self.output["finished_by"] = event


class AsyncCleanupOnTimeout(Timeouts):
    """Async run with an async process_timeout override that cleans up, then fails."""

    async def run(self, event: Any = None) -> None:
        if event is None:
            self.schedule_timeout(0.05)
            self.suspend()
        if event == TIMEOUT:
            await self.process_timeout()

    async def process_timeout(self) -> None:  # type: ignore[override]
        self.output["cleaned_up"] = True
        super().process_timeout()


# ---- helpers -------------------------------------------------------------------------------


async def wait_for_state(world: Any, plan_id: str, step_id: int, state: str) -> None:
    async def reached() -> bool:
        plan = await world.load_plan(plan_id)
        return plan.steps[step_id].state == state

    await wait_for(reached)
