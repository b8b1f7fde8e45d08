"""Runner base class and Update (spec §4.2, §9.1 cases 55-60)."""

from __future__ import annotations

import json
import time

import pytest

from smart_proxy_dynflow.runner import Runner, SuspendedAction, Update

ACTION = SuspendedAction("plan-1", 2)


class CountingRunner(Runner):
    """Publishes "tick <n>" on every refresh; records kill calls."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.refreshes = 0
        self.killed = 0

    async def start(self) -> None:
        self.publish_data("started", "stdout")

    async def refresh(self) -> None:
        self.refreshes += 1
        self.publish_data(f"tick {self.refreshes}", "stdout")

    async def kill(self) -> None:
        self.killed += 1


def test_suspended_action_is_hashable_value() -> None:
    assert SuspendedAction("plan-1", 2) == ACTION
    assert {ACTION: 1}[SuspendedAction("plan-1", 2)] == 1
    with pytest.raises(AttributeError):
        ACTION.step_id = 3  # type: ignore[misc]


def test_runner_id_defaults_to_uuid_and_can_be_given() -> None:
    first, second = Runner(), Runner()
    assert first.id != second.id
    assert len(first.id) == 36
    assert Runner(id="my-id").id == "my-id"
    assert first.suspended_action is None
    assert first.exit_status is None and first.exit_status_timestamp is None
    assert first.logger.name == "smart_proxy_dynflow.runner"


def test_no_outputs_no_updates() -> None:  # case 55
    assert Runner(suspended_action=ACTION).generate_updates() == {}


def test_one_output_single_update_without_exit_status() -> None:  # case 56
    runner = Runner(suspended_action=ACTION)
    runner.publish_data("hello", "stdout")
    updates = runner.generate_updates()
    assert list(updates) == [ACTION]
    update = updates[ACTION]
    assert [r["output"] for r in update.output] == ["hello"]
    assert update.exit_status is None
    assert update.exit_status_timestamp is None
    # the buffer was replaced by a fresh one
    assert runner.generate_updates() == {}


def test_publish_data_timestamp() -> None:  # case 57
    runner = Runner(suspended_action=ACTION)
    before = time.time()
    runner.publish_data("now")
    runner.publish_data("then", timestamp=1234.5)
    now, then = runner.generate_updates()[ACTION].output
    assert isinstance(now["timestamp"], float)
    assert before <= now["timestamp"] <= time.time()
    assert then["timestamp"] == 1234.5
    assert now["output_type"] == "debug"


def test_publish_data_id_only_when_given() -> None:  # case 58
    runner = Runner(suspended_action=ACTION)
    runner.publish_data("no id")
    runner.publish_data("with id", id="42")
    without, with_id = runner.generate_updates()[ACTION].output
    assert "id" not in without
    assert with_id["id"] == "42"


def test_without_suspended_action_updates_keyed_by_none() -> None:  # case 59
    runner = Runner()
    runner.publish_data("x")
    assert list(runner.generate_updates()) == [None]


def test_publish_exit_status() -> None:  # case 60
    runner = Runner(suspended_action=ACTION)
    before = time.time()
    runner.publish_exit_status(3)
    assert runner.exit_status == 3
    assert isinstance(runner.exit_status_timestamp, float)
    assert before <= runner.exit_status_timestamp <= time.time()
    update = runner.generate_updates()[ACTION]
    assert update.output == []
    assert update.exit_status == 3
    assert update.exit_status_timestamp == runner.exit_status_timestamp


def test_exit_status_is_never_emitted_twice() -> None:
    runner = Runner(suspended_action=ACTION)
    runner.publish_data("last words")
    runner.publish_exit_status(0)
    assert runner.generate_updates()[ACTION].exit_status == 0
    assert runner.generate_updates() == {}
    runner.publish_exit_status(0)  # re-publishing the same status is ignored
    assert runner.generate_updates() == {}
    runner.publish_data("late output")
    late = runner.generate_updates()[ACTION]
    assert late.exit_status is None
    assert late.output[0]["output"] == "late output"


def test_publish_exception_fatal_and_non_fatal() -> None:
    runner = Runner(suspended_action=ACTION)
    runner.publish_exception("Oops", RuntimeError("soft"), fatal=False)
    update = runner.generate_updates()[ACTION]
    assert update.exit_status is None
    assert update.output[0]["output"] == "Oops: RuntimeError - soft"
    assert update.output[0]["output_type"] == "debug"

    runner.publish_exception("Oops", ValueError("hard"))
    update = runner.generate_updates()[ACTION]
    assert update.exit_status == "EXCEPTION"
    assert update.output[0]["output"] == "Oops: ValueError - hard"


def test_update_timestamp_defaults_only_with_exit_status() -> None:
    assert Update([]).exit_status_timestamp is None
    before = time.time()
    stamped = Update([], 0)
    assert stamped.exit_status_timestamp is not None
    assert before <= stamped.exit_status_timestamp <= time.time()
    assert Update([], 1, 5.0).exit_status_timestamp == 5.0


def test_update_event_round_trip() -> None:
    record = {"output_type": "stdout", "output": "hi", "timestamp": 1.0, "id": 1}
    update = Update([record], "EXCEPTION", 2.0)
    event = json.loads(json.dumps(update.to_event()))
    assert event == {
        "runner_update": {
            "output": [record],
            "exit_status": "EXCEPTION",
            "exit_status_timestamp": 2.0,
        }
    }
    assert Update.from_event(event) == update


@pytest.mark.parametrize("event", [None, "poll", {"other": 1}, {"runner_update": "nope"}, [1]])
def test_update_from_other_events_is_none(event: object) -> None:
    assert Update.from_event(event) is None


def test_update_encode_exception() -> None:
    fatal = Update.encode_exception("Runner error", KeyError("k"))
    assert fatal.exit_status == "EXCEPTION"
    assert [r["output"] for r in fatal.output] == ["Runner error: KeyError - 'k'"]
    assert fatal.output[0]["output_type"] == "debug"
    soft = Update.encode_exception("Runner error", KeyError("k"), fatal=False)
    assert soft.exit_status is None and soft.exit_status_timestamp is None
    assert len(soft.output) == 1


async def test_abstract_hooks_raise() -> None:
    runner = Runner()
    with pytest.raises(NotImplementedError):
        await runner.start()
    with pytest.raises(NotImplementedError):
        await runner.refresh()
    with pytest.raises(NotImplementedError):
        await runner.reattach()
    assert Runner.recoverable is False
    assert runner.timeout_interval() is None
    await runner.kill()  # default no-ops
    await runner.close()
    assert runner.generate_updates() == {}


async def test_timeout_publishes_message_and_kills() -> None:
    runner = CountingRunner(suspended_action=ACTION)
    await runner.timeout()
    assert runner.killed == 1
    output = runner.generate_updates()[ACTION].output
    assert output[0]["output"] == "Timeout for execution passed, trying to stop the job"
    assert output[0]["output_type"] == "debug"


async def test_refresh_helpers_and_default_external_event() -> None:
    runner = CountingRunner(suspended_action=ACTION)
    await runner.start()
    first = await runner.run_refresh()
    assert [r["output"] for r in first[ACTION].output] == ["started", "tick 1"]
    second = await runner.run_refresh_output()
    assert [r["output"] for r in second[ACTION].output] == ["tick 2"]
    third = await runner.external_event({"data": 1})
    assert [r["output"] for r in third[ACTION].output] == ["tick 3"]
    assert runner.refreshes == 3
