"""Small actions for executor tests (after the original DummyExample)."""

from __future__ import annotations

import threading
from typing import Any

from dynflow import CANCEL, Action


class Dummy(Action):
    def run(self) -> None:
        self.output["ok"] = True


class AsyncDummy(Action):
    async def run(self) -> None:
        self.output["ok"] = True


class FailingDummy(Action):
    def run(self) -> None:
        raise RuntimeError("Trolling detected")


FLAKY: dict[str, bool] = {"fail": True}


class Flaky(Action):
    """Fails while ``FLAKY['fail']`` is set; used to test resume after a fix."""

    def run(self) -> None:
        if FLAKY["fail"]:
            raise RuntimeError("still broken")
        self.output["fixed"] = True


class NotSerializableOutput(Action):
    def run(self) -> None:
        self.output["obj"] = object()


class Waiting(Action):
    """Suspends until an event arrives; ``{"finish": true}`` completes, other events are logged."""

    cancellable = True

    def run(self, event: Any = None) -> None:
        if event is None:
            self.output["events"] = []
            self.suspend()
        if event == CANCEL:
            self.output["cancelled"] = True
            self.fail("cancelled by the user")
        self.output.setdefault("events", []).append(event)
        if isinstance(event, dict) and event.get("finish"):
            return
        self.suspend()


class Ticking(Action):
    """Suspends and wakes itself with a planned event after ``delay`` seconds."""

    def run(self, event: Any = None) -> None:
        if event is None:
            self.plan_event("tick", self.input.get("delay", 0.05))
            self.suspend()
        self.output["woken_by"] = event


class WithChunks(Action):
    def run(self) -> None:
        self.output_chunk("hello ", kind="stdout")
        self.output_chunk("world", kind="stdout")


class Parallel(Action):
    def plan(self, count: int = 3) -> None:
        with self.sequence():
            with self.concurrence():
                for _ in range(count):
                    self.plan_action(Dummy)
            self.plan_action(FailingDummy)
            self.plan_action(Dummy)


class SkipRescue(Action):
    def plan(self) -> None:
        self.plan_action(FailingDummy)
        self.plan_action(Dummy)
        self.plan_self()

    def rescue_strategy_for_self(self) -> str:
        return "skip"

    def rescue_strategy_for_planned_action(self, action: Action) -> str:
        return "skip"


class FailRescue(Action):
    def plan(self) -> None:
        self.plan_action(FailingDummy)

    def rescue_strategy_for_planned_action(self, action: Action) -> str:
        return "fail"


class SlowSuspend(Action):
    """Takes a moment before suspending, so events sent meanwhile are queued."""

    async def run(self, event: Any = None) -> None:
        import asyncio

        self.output.setdefault("events", []).append(event)
        if event is None:
            await asyncio.sleep(0.3)
            self.suspend()
        if event == "last":
            return
        self.suspend()


SLOW_RUNNING: dict[str, int] = {"now": 0, "peak": 0}


class OnSlowQueue(Action):
    """A blocking step on the ``slow`` queue; records how many ran at once."""

    queue = "slow"

    def run(self) -> None:
        import time

        with _slow_lock:
            SLOW_RUNNING["now"] += 1
            SLOW_RUNNING["peak"] = max(SLOW_RUNNING["peak"], SLOW_RUNNING["now"])
        time.sleep(0.05)
        with _slow_lock:
            SLOW_RUNNING["now"] -= 1
        self.output["thread"] = threading.current_thread().name

_slow_lock = threading.Lock()
