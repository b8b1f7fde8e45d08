"""The ``/logs`` buffer (§9, §13 ``log_buffer/*``): rings, error tail, filters, entry format."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest

from smart_proxy.log import request_id
from smart_proxy.log_buffer import LogBuffer
from smart_proxy.redact import FILTERED


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("tests.smart_proxy.log_buffer")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
    log.propagate = True


def _attach(logger: logging.Logger, buffer: LogBuffer) -> LogBuffer:
    logger.addHandler(buffer)
    return buffer


def test_ring_wraps_and_keeps_the_newest(logger: logging.Logger) -> None:
    buffer = _attach(logger, LogBuffer(size=3, tail_size=2))
    for n in range(5):
        logger.info("message %d", n)
    assert [e["message"] for e in buffer.entries()] == ["message 2", "message 3", "message 4"]


def test_evicted_errors_move_to_the_tail(logger: logging.Logger) -> None:
    buffer = _attach(logger, LogBuffer(size=2, tail_size=2))
    logger.error("error 1")
    logger.info("info 1")
    logger.critical("fatal 1")
    logger.error("error 2")
    logger.info("info 2")
    logger.info("info 3")
    logger.info("info 4")
    entries = buffer.entries()
    # The tail (oldest first) comes before the main ring; info 1 was evicted and dropped,
    # error 1 was pushed out of the 2-entry tail by fatal 1 and error 2.
    assert [e["message"] for e in entries] == ["fatal 1", "error 2", "info 3", "info 4"]
    assert [e["level"] for e in entries] == ["FATAL", "ERROR", "INFO", "INFO"]
    timestamps = [e["timestamp"] for e in entries]
    assert timestamps == sorted(timestamps)


def test_from_timestamp_filter(logger: logging.Logger) -> None:
    buffer = _attach(logger, LogBuffer())
    logger.info("before")
    time.sleep(0.01)
    cut = time.time()
    time.sleep(0.01)
    logger.info("after")
    assert [e["message"] for e in buffer.entries(cut)] == ["after"]
    assert [e["message"] for e in buffer.entries(0)] == ["before", "after"]
    assert buffer.entries(time.time() + 10) == []


def test_only_records_at_or_above_the_level(logger: logging.Logger) -> None:
    buffer = _attach(logger, LogBuffer(level="WARN"))
    logger.debug("debug")
    logger.info("info")
    logger.warning("warn")
    logger.log(logging.CRITICAL + 10, "unknown")
    assert [(e["level"], e["message"]) for e in buffer.entries()] == [
        ("WARN", "warn"),
        ("UNKNOWN", "unknown"),
    ]


def test_entry_format(logger: logging.Logger) -> None:
    buffer = _attach(logger, LogBuffer(level=logging.DEBUG))
    token = request_id.set("0123456789abcdef")
    try:
        logger.debug("in a request")
    finally:
        request_id.reset(token)
    try:
        raise ValueError("bad value")
    except ValueError:
        logger.exception("it failed")
    logger.info("password=hunter2 and invalid \udcff byte")
    first, second, third = buffer.entries()
    assert set(first) == {"timestamp", "level", "message", "request_id"}
    assert first["request_id"] == "01234567"
    assert first["level"] == "DEBUG"
    assert isinstance(first["timestamp"], float) and abs(first["timestamp"] - time.time()) < 5
    assert second["level"] == "ERROR"
    assert "request_id" not in second
    assert "ValueError: bad value" in second["backtrace"]
    assert "Traceback" in second["backtrace"]
    assert "hunter2" not in third["message"] and FILTERED in third["message"]
    assert third["message"].endswith("invalid ? byte")
    assert "backtrace" not in third


def test_report_shape() -> None:
    buffer = LogBuffer(size=10, tail_size=4)
    report = buffer.report(0, {"dns": "boom"})
    assert report == {
        "info": {
            "size": 10,
            "tail_size": 4,
            "level": None,
            "level_tail": 3,
            "failed_modules": {"dns": "boom"},
        },
        "logs": [],
    }


def test_zero_sizes(logger: logging.Logger) -> None:
    buffer = _attach(logger, LogBuffer(size=0, tail_size=1))
    logger.info("dropped")
    logger.error("kept in the tail")
    assert [e["message"] for e in buffer.entries()] == ["kept in the tail"]
    with pytest.raises(ValueError):
        LogBuffer(size=-1)
    buffer.clear()
    assert buffer.entries() == []
