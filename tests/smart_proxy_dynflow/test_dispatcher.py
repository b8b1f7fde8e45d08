"""Dispatcher driving runners (spec §4.5, §9.1 cases 12-14 adapted)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from smart_proxy_dynflow.dispatcher import Dispatcher
from smart_proxy_dynflow.parent_runner import ParentRunner
from smart_proxy_dynflow.process_runner import ProcessRunner
from smart_proxy_dynflow.runner import Runner, SuspendedAction, Update

ACTION = SuspendedAction("plan", 1)
OTHER = SuspendedAction("other-plan", 7)
INTERVAL = 0.05


class Recorder:
    """The ``deliver`` callback: remembers every (receiver, update)."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[SuspendedAction, Update]] = []
        self.fail_next = 0

    async def __call__(self, receiver: SuspendedAction, update: Update) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("engine unavailable")
        self.deliveries.append((receiver, update))

    def outputs(self, receiver: SuspendedAction = ACTION) -> list[str]:
        return [r["output"] for to, u in self.deliveries if to == receiver for r in u.output]

    def statuses(self, receiver: SuspendedAction = ACTION) -> list[Any]:
        return [
            u.exit_status
            for to, u in self.deliveries
            if to == receiver and u.exit_status is not None
        ]


class FakeRunner(Runner):
    """A scripted runner: says "tick <n>" on refresh, exits on request, records calls."""

    def __init__(
        self,
        *,
        exit_after: int | None = None,
        silent: bool = False,
        fail_in: str | None = None,
        timeout: float | None = None,
        refresh_delay: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.exit_after = exit_after
        self.silent = silent
        self.fail_in = fail_in
        self._timeout = timeout
        self.refresh_delay = refresh_delay
        self.calls: list[str] = []
        self.refreshes = 0
        self.closed = 0
        self.active = 0
        self.max_active = 0

    def _fail(self, hook: str) -> None:
        self.calls.append(hook)
        if self.fail_in == hook:
            raise RuntimeError(f"{hook} exploded")

    async def start(self) -> None:
        self._fail("start")
        if not self.silent:
            self.publish_data("started", "stdout")

    async def reattach(self) -> None:
        self._fail("reattach")
        self.publish_data("reattached", "stdout")

    async def refresh(self) -> None:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.refresh_delay:
                await asyncio.sleep(self.refresh_delay)
            self._fail("refresh")
            self.refreshes += 1
            if not self.silent:
                self.publish_data(f"tick {self.refreshes}", "stdout")
            if self.exit_after is not None and self.refreshes >= self.exit_after:
                self.publish_exit_status(0)
        finally:
            self.active -= 1

    async def kill(self) -> None:
        self._fail("kill")
        self.publish_exit_status(143)

    async def external_event(self, event: Any) -> dict[SuspendedAction | None, Update]:
        self._fail("external_event")
        self.publish_data(f"event {event}", "debug")
        return await super().external_event(event)

    async def run_refresh_output(self) -> dict[SuspendedAction | None, Update]:
        self.calls.append("run_refresh_output")
        return await super().run_refresh_output()

    def timeout_interval(self) -> float | None:
        return self._timeout

    async def close(self) -> None:
        self.closed += 1


async def wait_until(predicate: Callable[[], bool], limit: float = 3.0) -> None:
    async with asyncio.timeout(limit):
        while not predicate():
            await asyncio.sleep(0.005)


@pytest.fixture
async def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def dispatcher(recorder: Recorder):
    dispatcher = Dispatcher(recorder, refresh_interval=INTERVAL)
    yield dispatcher
    await dispatcher.stop()


async def test_start_refreshes_at_once_then_periodically(
    dispatcher: Dispatcher, recorder: Recorder
) -> None:  # case 12
    runner = FakeRunner(suspended_action=ACTION)
    assert dispatcher.start(ACTION, runner) == runner.id
    assert runner.id in dispatcher
    assert dispatcher.runner_ids() == [runner.id]
    assert dispatcher.status() == {"runners": 1}
    # start + immediate refresh arrive as one update, before the first interval
    await wait_until(lambda: recorder.deliveries)
    assert [r["output"] for r in recorder.deliveries[0][1].output] == ["started", "tick 1"]
    await wait_until(lambda: runner.refreshes >= 4)
    assert recorder.outputs()[:5] == ["started", "tick 1", "tick 2", "tick 3", "tick 4"]
    assert all(to == ACTION and u.exit_status is None for to, u in recorder.deliveries)
    assert runner.calls[0] == "start"


async def test_refresh_without_updates_delivers_nothing_and_keeps_going(
    dispatcher: Dispatcher, recorder: Recorder
) -> None:  # case 13
    runner = FakeRunner(silent=True, suspended_action=ACTION)
    dispatcher.start(ACTION, runner)
    await wait_until(lambda: runner.refreshes >= 4)
    assert recorder.deliveries == []
    assert runner.id in dispatcher


async def test_exit_status_finishes_and_closes(
    dispatcher: Dispatcher, recorder: Recorder
) -> None:  # case 14
    runner = FakeRunner(exit_after=2, suspended_action=ACTION)
    dispatcher.start(ACTION, runner)
    await wait_until(lambda: runner.closed)
    assert runner.id not in dispatcher
    assert dispatcher.status() == {"runners": 0}
    assert recorder.statuses() == [0]
    assert recorder.deliveries[-1][1].exit_status == 0
    assert recorder.deliveries[-1][1].exit_status_timestamp is not None
    await asyncio.sleep(INTERVAL * 3)
    assert runner.refreshes == 2  # no refresh after finishing
    assert runner.closed == 1
    assert not dispatcher.kill(runner.id)
    assert not dispatcher.refresh_output(runner.id)


async def test_kill(dispatcher: Dispatcher, recorder: Recorder) -> None:
    runner = FakeRunner(suspended_action=ACTION)
    dispatcher.start(ACTION, runner)
    assert dispatcher.kill(runner.id) is True
    await wait_until(lambda: runner.closed)
    assert "kill" in runner.calls
    assert recorder.statuses() == [143]


async def test_external_event_delivers_at_once(recorder: Recorder) -> None:
    dispatcher = Dispatcher(recorder, refresh_interval=30)
    try:
        runner = FakeRunner(suspended_action=ACTION)
        dispatcher.start(ACTION, runner)
        await wait_until(lambda: recorder.deliveries)
        assert dispatcher.external_event(runner.id, {"n": 1}) is True
        await wait_until(lambda: len(recorder.deliveries) == 2)
        assert recorder.outputs()[-2:] == ["event {'n': 1}", "tick 2"]
    finally:
        await dispatcher.stop()


async def test_refresh_output_on_demand_and_coalesced(recorder: Recorder) -> None:
    dispatcher = Dispatcher(recorder, refresh_interval=30)
    try:
        runner = FakeRunner(suspended_action=ACTION, refresh_delay=0.02)
        dispatcher.start(ACTION, runner)
        await wait_until(lambda: recorder.deliveries)
        assert dispatcher.refresh_output(runner.id) is True
        assert dispatcher.refresh_output(runner.id) is True  # coalesced with the pending one
        await wait_until(lambda: len(recorder.deliveries) == 2)
        await asyncio.sleep(0.1)
        assert runner.calls.count("run_refresh_output") == 1
        assert recorder.outputs() == ["started", "tick 1", "tick 2"]
        # once processed, a new on-demand refresh is accepted again
        assert dispatcher.refresh_output(runner.id) is True
        await wait_until(lambda: len(recorder.deliveries) == 3)
        assert runner.calls.count("run_refresh_output") == 2
    finally:
        await dispatcher.stop()


async def test_unknown_ids_are_ignored(dispatcher: Dispatcher, recorder: Recorder) -> None:
    assert dispatcher.kill("nope") is False
    assert dispatcher.external_event("nope", {}) is False
    assert dispatcher.refresh_output("nope") is False
    assert "nope" not in dispatcher
    await asyncio.sleep(INTERVAL)
    assert recorder.deliveries == []


async def test_duplicate_runner_id_is_a_runner_error(
    dispatcher: Dispatcher, recorder: Recorder
) -> None:
    first = FakeRunner(silent=True, suspended_action=ACTION, id="same")
    second = FakeRunner(silent=True, suspended_action=OTHER, id="same")
    assert dispatcher.start(ACTION, first) == "same"
    assert dispatcher.start(OTHER, second) is None
    await wait_until(lambda: recorder.deliveries)
    ((receiver, update),) = recorder.deliveries
    assert receiver == OTHER
    assert update.exit_status == "EXCEPTION"
    assert update.output[0]["output"].startswith("Runner error: RuntimeError - ")
    assert "same" in update.output[0]["output"]
    assert second.calls == []
    assert "same" in dispatcher
    assert first.closed == 0


@pytest.mark.parametrize("hook", ["start", "refresh"])
async def test_exception_is_fatal_runner_error(
    dispatcher: Dispatcher, recorder: Recorder, hook: str
) -> None:
    runner = FakeRunner(fail_in=hook, suspended_action=ACTION)
    dispatcher.start(ACTION, runner)
    await wait_until(lambda: runner.closed)
    assert runner.id not in dispatcher
    receiver, update = recorder.deliveries[-1]
    assert receiver == ACTION
    assert update.exit_status == "EXCEPTION"
    assert update.output == [
        {**update.output[0], "output": f"Runner error: RuntimeError - {hook} exploded"}
    ]


async def test_exception_in_external_event_is_fatal(
    dispatcher: Dispatcher, recorder: Recorder
) -> None:
    runner = FakeRunner(fail_in="external_event", suspended_action=ACTION)
    dispatcher.start(ACTION, runner)
    dispatcher.external_event(runner.id, "x")
    await wait_until(lambda: runner.closed)
    assert recorder.statuses() == ["EXCEPTION"]


async def test_exception_in_kill_is_not_fatal(dispatcher: Dispatcher, recorder: Recorder) -> None:
    runner = FakeRunner(fail_in="kill", exit_after=4, silent=True, suspended_action=ACTION)
    dispatcher.start(ACTION, runner)
    dispatcher.kill(runner.id)
    await wait_until(lambda: runner.closed)
    first, last = recorder.deliveries[0][1], recorder.deliveries[-1][1]
    assert first.exit_status is None
    assert first.output[0]["output"] == "Runner error: RuntimeError - kill exploded"
    assert runner.refreshes == 4  # it kept running until it exited by itself
    assert last.exit_status == 0


async def test_timeout_publishes_message_and_kills(
    dispatcher: Dispatcher, recorder: Recorder
) -> None:
    runner = FakeRunner(silent=True, timeout=0.1, suspended_action=ACTION)
    dispatcher.start(ACTION, runner)
    await wait_until(lambda: runner.closed)
    assert "kill" in runner.calls
    assert recorder.outputs() == ["Timeout for execution passed, trying to stop the job"]
    assert recorder.statuses() == [143]


async def test_failing_deliver_does_not_stop_the_runner(
    dispatcher: Dispatcher, recorder: Recorder
) -> None:
    recorder.fail_next = 1
    runner = FakeRunner(exit_after=3, suspended_action=ACTION)
    dispatcher.start(ACTION, runner)
    await wait_until(lambda: runner.closed)
    # the first update (start + tick 1) was lost, the rest arrived
    assert recorder.outputs() == ["tick 2", "tick 3"]
    assert recorder.statuses() == [0]


async def test_commands_never_run_concurrently(dispatcher: Dispatcher) -> None:
    runner = FakeRunner(refresh_delay=0.01, exit_after=12, suspended_action=ACTION)
    dispatcher.start(ACTION, runner)
    for n in range(5):
        dispatcher.external_event(runner.id, n)
        dispatcher.refresh_output(runner.id)
    await wait_until(lambda: runner.closed)
    assert runner.max_active == 1
    assert runner.refreshes == 12


async def test_runner_without_suspended_action_uses_the_dispatchers(
    dispatcher: Dispatcher, recorder: Recorder
) -> None:
    runner = FakeRunner(exit_after=1)
    dispatcher.start(ACTION, runner)
    await wait_until(lambda: runner.closed)
    assert [to for to, _ in recorder.deliveries] == [ACTION]
    assert recorder.statuses() == [0]


async def test_parent_runner_updates_reach_every_host(
    dispatcher: Dispatcher, recorder: Recorder
) -> None:
    class Fleet(ParentRunner):
        async def start(self) -> None:
            self.broadcast_data("hello", "stdout")

        async def refresh(self) -> None:
            self.publish_exit_status_for("bar", 1)
            self.publish_exit_status(0)

    foo, bar = SuspendedAction("foo-plan", 3), SuspendedAction("bar-plan", 4)
    targets = {
        "foo": {"execution_plan_id": "foo-plan", "run_step_id": 3, "input": {}},
        "bar": {"execution_plan_id": "bar-plan", "run_step_id": 4, "input": {}},
    }
    runner = Fleet(targets, suspended_action=ACTION)
    dispatcher.start(ACTION, runner)
    await wait_until(lambda: runner.id not in dispatcher)
    assert [to for to, _ in recorder.deliveries] == [foo, bar, ACTION]
    assert recorder.statuses(ACTION) == [0]
    assert recorder.statuses(foo) == [0]
    assert recorder.statuses(bar) == [1]
    assert recorder.outputs(foo) == ["hello"] and recorder.outputs(bar) == ["hello"]


async def test_resume_reattaches(dispatcher: Dispatcher, recorder: Recorder) -> None:
    runner = FakeRunner(exit_after=1, suspended_action=ACTION)
    dispatcher.start(ACTION, runner, resume=True)
    await wait_until(lambda: runner.closed)
    assert runner.calls[0] == "reattach" and "start" not in runner.calls
    assert recorder.outputs() == ["reattached", "tick 1"]


async def test_resume_of_non_recoverable_runner_is_an_error(
    dispatcher: Dispatcher, recorder: Recorder
) -> None:
    class Plain(Runner):
        async def refresh(self) -> None:
            pass

    runner = Plain(suspended_action=ACTION)
    dispatcher.start(ACTION, runner, resume=True)
    await wait_until(lambda: runner.id not in dispatcher)
    ((_, update),) = recorder.deliveries
    assert update.exit_status == "EXCEPTION"
    assert "NotImplementedError" in update.output[0]["output"]


async def test_stop_cancels_and_closes_without_delivering(recorder: Recorder) -> None:
    class Hanging(FakeRunner):
        async def start(self) -> None:
            await asyncio.sleep(1000)

    dispatcher = Dispatcher(recorder, refresh_interval=INTERVAL)
    busy = FakeRunner(silent=True, suspended_action=ACTION)
    hanging = Hanging(suspended_action=OTHER)
    dispatcher.start(ACTION, busy)
    dispatcher.start(OTHER, hanging)
    not_yet_running = FakeRunner(suspended_action=SuspendedAction("p", 9))
    await wait_until(lambda: busy.refreshes >= 1)
    dispatcher.start(not_yet_running.suspended_action, not_yet_running)
    await dispatcher.stop()
    assert busy.closed == 1 and hanging.closed == 1 and not_yet_running.closed == 1
    assert dispatcher.runner_ids() == []
    assert recorder.deliveries == []
    refreshes = busy.refreshes
    await asyncio.sleep(INTERVAL * 2)
    assert busy.refreshes == refreshes


async def test_stop_lets_an_exit_status_being_stored_finish() -> None:
    """A stop (SIGTERM) while the exit status is being stored: the runner still learns that
    it was stored and closes knowing it (it removes the job's directory on the host then);
    cancelled in between, the engine stored the status anyway and the directory stayed."""
    storing = asyncio.Event()
    release = asyncio.Event()

    async def slow_store(receiver: SuspendedAction, update: Update) -> bool:
        if update.exit_status is not None:
            storing.set()
            await release.wait()  # the engine's save of the step
        return True

    class Remembering(FakeRunner):
        stored_when_closed: bool | None = None

        async def close(self) -> None:
            self.stored_when_closed = self.is_result_stored
            await super().close()

    dispatcher = Dispatcher(slow_store, refresh_interval=INTERVAL)
    runner = Remembering(exit_after=1, suspended_action=ACTION)
    dispatcher.start(ACTION, runner)
    await asyncio.wait_for(storing.wait(), 3)
    stopping = asyncio.ensure_future(dispatcher.stop())
    await asyncio.sleep(0)
    release.set()
    await asyncio.wait_for(stopping, 3)
    assert runner.closed == 1
    assert runner.stored_when_closed is True


async def test_stop_waits_for_an_exit_status_that_begins_storing_during_the_grace() -> None:
    """While stop waits for one exit status being stored, another job ends and its status
    begins to be stored: stop waits for that one too, and both runners close knowing their
    results were stored (a snapshot of the runners storing at the stop's start missed it)."""
    first, second = SuspendedAction("plan", 1), SuspendedAction("plan", 2)
    storing = {first: asyncio.Event(), second: asyncio.Event()}
    release = {first: asyncio.Event(), second: asyncio.Event()}
    second_may_end = asyncio.Event()

    async def slow_store(receiver: SuspendedAction, update: Update) -> bool:
        if update.exit_status is not None:
            storing[receiver].set()
            await release[receiver].wait()
        return True

    class Remembering(FakeRunner):
        stored_when_closed: bool | None = None

        async def refresh(self) -> None:
            if self.suspended_action == second:
                if second_may_end.is_set():
                    self.publish_exit_status(0)
                return
            await super().refresh()

        async def close(self) -> None:
            self.stored_when_closed = self.is_result_stored
            await super().close()

    dispatcher = Dispatcher(slow_store, refresh_interval=INTERVAL)
    runners = {
        first: Remembering(exit_after=1, suspended_action=first),
        second: Remembering(suspended_action=second),
    }
    for action, runner in runners.items():
        dispatcher.start(action, runner)
    await asyncio.wait_for(storing[first].wait(), 3)
    stopping = asyncio.ensure_future(dispatcher.stop())
    second_may_end.set()
    await asyncio.wait_for(storing[second].wait(), 3)
    release[first].set()
    await wait_until(lambda: runners[first].closed == 1)
    assert not stopping.done()  # the second status is still being stored
    release[second].set()
    await asyncio.wait_for(stopping, 3)
    assert [r.stored_when_closed for r in runners.values()] == [True, True]


async def test_stop_lets_a_runner_closing_after_its_stored_result_finish() -> None:
    """A stop while a finished runner is closing (removing the job's directory on the host
    after its exit status was stored) waits for the close instead of cutting it short."""
    closing = asyncio.Event()
    release = asyncio.Event()

    class SlowClose(FakeRunner):
        completed_close = False

        async def close(self) -> None:
            closing.set()
            await release.wait()  # the host removing the directory
            self.completed_close = True
            await super().close()

    async def store(receiver: SuspendedAction, update: Update) -> bool:
        return True

    dispatcher = Dispatcher(store, refresh_interval=INTERVAL)
    runner = SlowClose(exit_after=1, suspended_action=ACTION)
    dispatcher.start(ACTION, runner)
    await asyncio.wait_for(closing.wait(), 3)
    stopping = asyncio.ensure_future(dispatcher.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()
    release.set()
    await asyncio.wait_for(stopping, 3)
    assert runner.completed_close and runner.is_result_stored


async def test_process_runner_end_to_end(dispatcher: Dispatcher, recorder: Recorder) -> None:
    runner = ProcessRunner(["sh", "-c", "echo out; echo err >&2; exit 3"], suspended_action=ACTION)
    dispatcher.start(ACTION, runner)
    await wait_until(lambda: runner.id not in dispatcher)
    records = [r for _, u in recorder.deliveries for r in u.output]
    assert "".join(r["output"] for r in records if r["output_type"] == "stdout") == "out\n"
    assert "".join(r["output"] for r in records if r["output_type"] == "stderr") == "err\n"
    assert recorder.statuses() == [3]


async def test_process_runner_killed_through_dispatcher(
    dispatcher: Dispatcher, recorder: Recorder
) -> None:
    runner = ProcessRunner(["sleep", "1000"], suspended_action=ACTION)
    dispatcher.start(ACTION, runner)
    await wait_until(lambda: runner.process is not None)
    dispatcher.kill(runner.id)
    await wait_until(lambda: runner.id not in dispatcher)
    assert recorder.statuses() == [143]
    assert runner.process is not None and runner.process.returncode == -15
