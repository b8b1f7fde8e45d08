"""ParentRunner: per-host output and exit statuses (spec §4.3, §9.1 cases 61-73)."""

from __future__ import annotations

import time

import pytest

from smart_proxy_dynflow.continuous_output import ContinuousOutput
from smart_proxy_dynflow.parent_runner import ParentRunner
from smart_proxy_dynflow.runner import SuspendedAction

PARENT = SuspendedAction("parent-plan", 1)
FOO = SuspendedAction("foo-plan", 3)
BAR = SuspendedAction("bar-plan", 4)


@pytest.fixture
def runner() -> ParentRunner:
    targets = {
        "foo": {"execution_plan_id": "foo-plan", "run_step_id": 3, "input": {"host": "foo"}},
        "bar": {"execution_plan_id": "bar-plan", "run_step_id": 4, "input": {"host": "bar"}},
    }
    return ParentRunner(targets, suspended_action=PARENT)


def test_one_output_buffer_per_target(runner: ParentRunner) -> None:  # case 61
    assert set(runner.outputs) == {"foo", "bar"}
    assert all(isinstance(o, ContinuousOutput) and o.empty for o in runner.outputs.values())
    assert runner.outputs["foo"] is not runner.outputs["bar"]
    assert runner.host_action("foo") == FOO
    assert runner.host_action("bar") == BAR


def test_no_output_no_updates(runner: ParentRunner) -> None:  # case 62
    assert runner.generate_updates() == {}


def test_only_targets_with_output_get_updates(runner: ParentRunner) -> None:  # cases 62, 64
    runner.publish_data_for("foo", "only foo", "stdout")
    updates = runner.generate_updates()
    assert list(updates) == [FOO]
    assert [r["output"] for r in updates[FOO].output] == ["only foo"]
    assert updates[FOO].exit_status is None
    assert runner.generate_updates() == {}


def test_publish_data_is_a_no_op(runner: ParentRunner) -> None:
    runner.publish_data("ignored", "stdout")
    assert runner.generate_updates() == {}


def test_broadcast_updates_both_hosts(runner: ParentRunner) -> None:  # cases 63, 67
    runner.broadcast_data("to all", "stdout")
    updates = runner.generate_updates()
    assert set(updates) == {FOO, BAR}
    for update in updates.values():
        assert [r["output"] for r in update.output] == ["to all"]
        assert update.output[0]["output_type"] == "stdout"
        assert update.exit_status is None


def test_publish_data_for_timestamp(runner: ParentRunner) -> None:  # case 65
    before = time.time()
    runner.publish_data_for("foo", "now")
    runner.publish_data_for("foo", "then", timestamp=99.5)
    now, then = runner.generate_updates()[FOO].output
    assert isinstance(now["timestamp"], float)
    assert before <= now["timestamp"] <= time.time()
    assert then["timestamp"] == 99.5


def test_publish_data_for_id(runner: ParentRunner) -> None:  # case 66
    runner.publish_data_for("bar", "no id")
    runner.publish_data_for("bar", "id", id=5)
    without, with_id = runner.generate_updates()[BAR].output
    assert "id" not in without
    assert with_id["id"] == 5


def test_broadcast_timestamp(runner: ParentRunner) -> None:  # case 68
    before = time.time()
    runner.broadcast_data("now")
    runner.broadcast_data("then", timestamp=7.0)
    updates = runner.generate_updates()
    now_stamps = {u.output[0]["timestamp"] for u in updates.values()}
    assert len(now_stamps) == 1
    (stamp,) = now_stamps
    assert isinstance(stamp, float) and before <= stamp <= time.time()
    assert {u.output[1]["timestamp"] for u in updates.values()} == {7.0}


def test_broadcast_id(runner: ParentRunner) -> None:  # case 69
    runner.broadcast_data("no id")
    runner.broadcast_data("id", id="x")
    for update in runner.generate_updates().values():
        assert "id" not in update.output[0]
        assert update.output[1]["id"] == "x"


def test_non_fatal_exception_broadcast_without_exit_status(runner: ParentRunner) -> None:  # 70
    runner.publish_exception("Trouble", RuntimeError("boom"), fatal=False)
    updates = runner.generate_updates()
    assert set(updates) == {FOO, BAR}
    for update in updates.values():
        assert update.exit_status is None
        assert update.output[0]["output"] == "Trouble: RuntimeError - boom"
        assert update.output[0]["output_type"] == "debug"
    assert runner.exit_status is None


def test_fatal_exception_publishes_exit_status(runner: ParentRunner) -> None:  # case 71
    runner.publish_exception("Trouble", RuntimeError("boom"))
    assert runner.exit_status == "EXCEPTION"
    updates = runner.generate_updates()
    assert set(updates) == {PARENT, FOO, BAR}
    assert {u.exit_status for u in updates.values()} == {"EXCEPTION"}
    assert updates[PARENT].output == []
    assert updates[FOO].output[0]["output"] == "Trouble: RuntimeError - boom"


def test_exit_status_updates_parent_and_every_host(runner: ParentRunner) -> None:  # case 72
    runner.publish_data_for("foo", "foo output")
    runner.publish_exit_status(0)
    updates = runner.generate_updates()
    assert list(updates)[-1] == PARENT  # last: hosts first, then the parent finishes
    assert set(updates) == {PARENT, FOO, BAR}
    assert {u.exit_status for u in updates.values()} == {0}
    assert len({u.exit_status_timestamp for u in updates.values()}) == 1
    assert updates[PARENT].exit_status_timestamp is not None
    assert updates[PARENT].output == []
    assert [r["output"] for r in updates[FOO].output] == ["foo output"]
    assert updates[BAR].output == []
    # the exit status is delivered once
    assert runner.generate_updates() == {}


def test_per_host_exit_status_override(runner: ParentRunner) -> None:  # case 73
    runner.publish_exit_status_for("foo", 1)
    assert runner.generate_updates() == {}  # overrides wait for the overall status
    runner.publish_exit_status(0)
    updates = runner.generate_updates()
    statuses = sorted(u.exit_status for u in updates.values())
    assert statuses == [0, 0, 1]
    assert updates[FOO].exit_status == 1
    assert updates[BAR].exit_status == 0
    assert updates[PARENT].exit_status == 0
    assert len({u.exit_status_timestamp for u in updates.values()}) == 1


def test_unknown_identifier_raises(runner: ParentRunner) -> None:
    with pytest.raises(KeyError):
        runner.publish_data_for("baz", "x")
    with pytest.raises(KeyError):
        runner.publish_exit_status_for("baz", 1)


def test_parent_without_suspended_action_keys_own_update_by_none() -> None:
    targets = {"foo": {"execution_plan_id": "foo-plan", "run_step_id": 3, "input": {}}}
    runner = ParentRunner(targets)
    runner.publish_exit_status(2)
    updates = runner.generate_updates()
    assert set(updates) == {None, FOO}
    assert updates[None].exit_status == 2 and updates[FOO].exit_status == 2
