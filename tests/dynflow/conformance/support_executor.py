"""Actions for the executor_test.rb port (after Dynflow's test/support/code_workflow_example.rb
and test/support/dummy_example.rb), plus the ``TestPause`` and ``TestExecutionLog`` helpers of
its test_helper.rb.

Only ``test_executor.py`` uses this module.
"""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

from dynflow import CANCEL, Action, Cancellable, Polling

WAIT = 10.0  # seconds a helper blocks at most; only reached when a test fails


# ---- test helpers --------------------------------------------------------------------------------
class TestPause:
    """Pause one action mid-run so the test can look at the stored plan (test_helper.rb).

    The action calls ``pause()`` from its worker thread; the test awaits ``wait_paused()``, makes
    its assertions and calls ``resume()``.
    """

    __test__ = False  # not a pytest test class
    _ready: threading.Event | None = None
    _release: threading.Event | None = None

    @classmethod
    def setup(cls) -> None:
        cls._ready = threading.Event()
        cls._release = threading.Event()

    @classmethod
    def teardown(cls) -> None:
        if cls._release is not None:
            cls._release.set()
        cls._ready = cls._release = None

    @classmethod
    def pause(cls) -> None:
        ready, release = cls._ready, cls._release
        if ready is None or release is None:
            raise RuntimeError("the TestPause class was not setup")
        if ready.is_set():
            raise RuntimeError("you can pause only once")
        ready.set()
        release.wait(WAIT)

    @classmethod
    async def wait_paused(cls) -> None:
        ready = cls._ready
        assert ready is not None, "the TestPause class was not setup"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while not ready.is_set():
            if loop.time() > deadline:
                raise AssertionError("the action did not pause in time")
            await asyncio.sleep(0.01)

    @classmethod
    def resume(cls) -> None:
        if cls._release is not None:
            cls._release.set()


class TestExecutionLog:
    """What ran in the run and finalize phases: ``(class name, input)`` pairs."""

    __test__ = False
    run: list[tuple[str, dict[str, Any]]] = []
    finalize: list[tuple[str, dict[str, Any]]] = []
    order: list[int] = []  # run step ids in the order their run started

    @classmethod
    def setup(cls) -> None:
        cls.run.clear()
        cls.finalize.clear()
        cls.order.clear()

    teardown = setup


class Gates:
    """Knobs a test sets before running the workflow (reset by ``reset()``)."""

    both_triages: threading.Barrier | None = None  # both Triage runs must start together
    hold: threading.Event = threading.Event()  # 'hold then troll' waits for it
    slow_started: threading.Event = threading.Event()
    slow_release: threading.Event = threading.Event()
    slow_done: int = 0

    @classmethod
    def reset(cls) -> None:
        cls.both_triages = None
        cls.hold = threading.Event()
        cls.slow_started = threading.Event()
        cls.slow_release = threading.Event()
        cls.slow_done = 0


# ---- CodeWorkflowExample ------------------------------------------------------------------------
class IncomingIssues(Action):
    def plan(self, issues: list[dict[str, Any]]) -> None:
        for issue in issues:
            self.plan_action(IncomingIssue, issue)
        self.plan_self(issues=issues)

    def finalize(self) -> None:
        TestExecutionLog.finalize.append((type(self).__name__, dict(self.input)))


class IncomingIssue(Action):
    def plan(self, issue: dict[str, Any]) -> None:
        if issue == "fail":
            raise RuntimeError("You want me to fail")
        self.plan_self(issue)
        self.plan_action(Triage, issue)


class Triage(Action):
    def plan(self, issue: dict[str, Any]) -> None:
        triage = self.plan_self(issue)
        self.plan_action(
            UpdateIssue,
            author=triage.input.get("author"),
            text=triage.input.get("text"),
            assignee=triage.output["classification"]["assignee"],
            severity=triage.output["classification"]["severity"],
        )

    def run(self) -> None:
        text = self.input["text"]
        TestExecutionLog.order.append(self.run_step_id)
        TestExecutionLog.run.append((type(self).__name__, dict(self.input)))
        if Gates.both_triages is not None:
            Gates.both_triages.wait(WAIT)  # broken (an error) if the other one does not start
        if "get a break" in text:
            TestPause.pause()
        if text == "hold then troll":
            Gates.hold.wait(WAIT)
            self.fail("Trolling detected")
        if text == "trolling":
            self.fail("Trolling detected")
        self.output["classification"] = {"assignee": "John Doe", "severity": "medium"}

    def finalize(self) -> None:
        if self.input["text"] == "trolling in finalize":
            self.fail("Trolling detected")
        TestExecutionLog.finalize.append((type(self).__name__, dict(self.input)))


class UpdateIssue(Action):
    def run(self) -> None:
        TestExecutionLog.order.append(self.run_step_id)


class NotifyAssignee(Action):
    subscribe = Triage

    def plan(self, *args: Any, **kwargs: Any) -> None:
        assert self.triggering_action is not None
        self.plan_self(triage=self.triggering_action.output)

    def run(self) -> None:
        TestExecutionLog.order.append(self.run_step_id)

    def finalize(self) -> None:
        TestExecutionLog.finalize.append((type(self).__name__, dict(self.input)))


class CodeDummy(Action):
    """CodeWorkflowExample::Dummy: neither run nor finalize."""

    @property
    def label(self) -> str:
        return "dummy_action"


class DummyWithFinalize(Action):
    def finalize(self) -> None:
        TestExecutionLog.finalize.append((type(self).__name__, dict(self.input)))


_EVENT_TASKS: set[asyncio.Task[Any]] = set()


def _send_later(coro: Any) -> None:
    """Send an event without waiting for it (the step sending it is still executing)."""
    task = asyncio.get_running_loop().create_task(coro)
    _EVENT_TASKS.add(task)

    def done(t: asyncio.Task[Any]) -> None:
        _EVENT_TASKS.discard(t)
        if not t.cancelled():
            t.exception()  # retrieved: a rejected event is no concern of the test

    task.add_done_callback(done)


class CancelableSuspended(Cancellable, Polling):
    poll_intervals = (0.01,)

    def _text(self) -> str:
        return str(self.input.get("text") or "")

    def invoke_external_task(self) -> dict[str, Any]:
        return {"progress": 0}

    async def poll_external_task(self) -> dict[str, Any]:
        progress = self.external_task["progress"]
        if progress == 30:
            if "cancel-external" in self._text():
                new_progress = progress
            elif "cancel-self" in self._text():
                assert self.world is not None and self.run_step_id is not None
                _send_later(self.world.event(self.execution_plan_id, self.run_step_id, CANCEL))
                new_progress = progress
            else:
                new_progress = progress + 10
        else:
            new_progress = progress + 10
        return {"progress": new_progress}

    def cancel_action(self) -> None:
        if "cancel-fail" not in self._text():
            self.external_task = {**self.external_task, "cancelled": True}
        else:
            self.fail("action cancelled")

    def done(self) -> bool:
        return bool(self.external_task) and self.external_task["progress"] >= 100

    def run_progress(self) -> float:
        task = self.external_task
        return task["progress"] / 100 if task else 0.0


# ---- DummyExample -------------------------------------------------------------------------------
class Dummy(Action):
    def run(self) -> None:
        pass


class FailingDummy(Action):
    def run(self) -> None:
        raise RuntimeError("error")

    def rescue_strategy(self) -> str:
        return "fail"


class Slow(Action):
    """Runs on the ``slow`` queue; waits for ``Gates.slow_release`` instead of sleeping."""

    queue = "slow"

    def plan(self, seconds: float) -> None:
        with self.sequence():
            self.plan_self(interval=seconds)
            self.plan_action(Dummy)

    def run(self) -> None:
        Gates.slow_started.set()
        Gates.slow_release.wait(max(float(self.input["interval"]), WAIT))
        Gates.slow_done += 1


class DummyPolling(Polling):
    """DummyExample::Polling."""

    poll_intervals = (0.001,)

    def _text(self) -> str:
        return str(self.input.get("text") or "")

    def invoke_external_task(self) -> dict[str, Any]:
        if self._text() == "troll setup":
            self.fail("Trolling detected")
        return {"progress": 0, "done": False}

    def poll_external_task(self) -> dict[str, Any]:
        if self._text() == "troll progress" and not self.output.get("trolled"):
            self.output["trolled"] = True
            self.fail("Trolling detected")
        match = re.search(r"pause in progress (\d+)", self._text())
        if match and self.external_task["progress"] == int(match.group(1)):
            TestPause.pause()
        progress = self.external_task["progress"] + 10
        return {"progress": progress, "done": progress >= 100}

    def done(self) -> bool:
        return bool(self.external_task) and self.external_task["progress"] >= 100

    def run_progress(self) -> float:
        task = self.external_task
        return task["progress"] / 100 if task else 0.0


class WeightedPolling(Action):
    def plan(self, input: dict[str, Any]) -> None:
        with self.sequence():
            self.plan_self(input)
            self.plan_action(DummyPolling, input)

    def run(self) -> None:
        pass

    def finalize(self) -> None:
        pass

    def run_progress_weight(self) -> float:
        return 4

    def finalize_progress_weight(self) -> float:
        return 5


class DeprecatedEventedAction(Action):
    def run(self, event: Any = None) -> None:
        if event == "timeout":
            self.output["event"] = "timeout"
            raise RuntimeError("action timeouted")
        if event is None:
            if self.input.get("timeout"):
                self.plan_event("timeout", self.input["timeout"])
            self.suspend()
        self.output["event"] = event


class PlanEventsAction(Action):
    def run(self, event: Any = None) -> None:
        if event == "ping":
            self.output["result"] = "pinged"
        elif event is None:
            self.plan_event("ping", self.input.get("ping_time", 0.5))
            self.suspend()
