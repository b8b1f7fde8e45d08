"""ContinuousOutput record format and helpers (spec §4.4)."""

from __future__ import annotations

import json
import time

import pytest

from smart_proxy_dynflow.continuous_output import ContinuousOutput, format_exception


def test_new_output_is_empty() -> None:
    output = ContinuousOutput()
    assert output.empty
    assert len(output) == 0
    assert output.raw_outputs == []


def test_add_output_record_format() -> None:
    output = ContinuousOutput()
    before = time.time()
    output.add_output("hello", "stdout")
    record = output.raw_outputs[0]
    assert set(record) == {"output_type", "output", "timestamp"}
    assert record["output_type"] == "stdout"
    assert record["output"] == "hello"
    assert isinstance(record["timestamp"], float)
    assert before <= record["timestamp"] <= time.time()
    assert not output.empty
    assert len(output) == 1


def test_add_output_defaults_to_debug_and_honours_timestamp_and_id() -> None:
    output = ContinuousOutput()
    output.add_output("x", timestamp=12, id="abc")
    assert output.raw_outputs == [
        {"output_type": "debug", "output": "x", "timestamp": 12.0, "id": "abc"}
    ]
    assert isinstance(output.raw_outputs[0]["timestamp"], float)


def test_raw_outputs_are_json_ready() -> None:
    output = ContinuousOutput()
    output.add_output("a", "stdout", 1.5)
    output.add_output("b", "stderr", 2.5, id=7)
    assert json.loads(json.dumps(output.raw_outputs)) == output.raw_outputs


def test_add_raw_output() -> None:
    output = ContinuousOutput()
    record = {"output_type": "stdout", "output": "hi", "timestamp": 1.0, "id": 3}
    output.add_raw_output(record)
    assert output.raw_outputs == [record]


@pytest.mark.parametrize("missing", ["output_type", "output", "timestamp"])
def test_add_raw_output_requires_mandatory_keys(missing: str) -> None:
    record = {"output_type": "stdout", "output": "hi", "timestamp": 1.0}
    del record[missing]
    output = ContinuousOutput()
    with pytest.raises(ValueError, match=missing):
        output.add_raw_output(record)
    assert output.empty


def test_sort_and_humanize() -> None:
    output = ContinuousOutput()
    output.add_output("third", "stdout", 3.0)
    output.add_output("first", "stdout", 1.0)
    output.add_output("second", "stderr", 2.0)
    assert output.humanize() == "first\nsecond\nthird"
    assert [r["timestamp"] for r in output.raw_outputs] == [1.0, 2.0, 3.0]


def test_sort_is_stable_for_equal_timestamps() -> None:
    output = ContinuousOutput()
    output.add_output("a", timestamp=1.0)
    output.add_output("b", timestamp=1.0)
    output.sort()
    assert [r["output"] for r in output.raw_outputs] == ["a", "b"]


def test_format_exception() -> None:
    assert format_exception("Runner error", ValueError("boom")) == "Runner error: ValueError - boom"
