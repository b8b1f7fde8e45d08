"""Log destinations, line format, redaction, log reopening and the request-log middleware."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import re
import signal
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from smart_proxy import log
from smart_proxy.redact import FILTERED

LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d (?P<rid>.{8}) \[(?P<level>[A-Z])\] (?P<msg>.*)$"
)
logger = logging.getLogger("tests.smart_proxy.log")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    log.reset_logging()
    root.setLevel(level)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _record(message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logger.makeRecord(logger.name, level, __file__, 1, message, None, None)


# ---- format -------------------------------------------------------------------------------------


def test_file_pattern_with_and_without_request_id() -> None:
    formatter = log.PatternFormatter(log.DEFAULT_FILE_PATTERN)
    token = log.request_id.set("1a2b3c4d5e6f")
    try:
        line = formatter.format(_record("hello"))
    finally:
        log.request_id.reset(token)
    match = LINE.match(line)
    assert match, line
    assert (match["rid"], match["level"], match["msg"]) == ("1a2b3c4d", "I", "hello")

    outside = formatter.format(_record("boom", logging.CRITICAL))
    match = LINE.match(outside)
    assert match, outside
    assert (match["rid"], match["level"]) == (" " * 8, "F")


def test_pattern_conversions() -> None:
    formatter = log.PatternFormatter("%-5l|%c|%X{remote_ip}|%5.3m|100%%|%d{%Y}")
    token = log.remote_ip.set("10.0.0.1")
    try:
        line = formatter.format(_record("message", logging.WARNING))
    finally:
        log.remote_ip.reset(token)
    year = line.rsplit("|", 1)[1]
    assert line == f"WARN |tests.smart_proxy.log|10.0.0.1|  mes|100%|{year}"
    assert re.fullmatch(r"\d{4}", year)


def test_levels() -> None:
    assert log.parse_level("warn") == logging.WARNING
    assert log.parse_level("FATAL") == logging.CRITICAL
    assert log.parse_level("DEBUG") == logging.DEBUG
    assert log.parse_level("UNKNOWN") > logging.CRITICAL
    with pytest.raises(ValueError, match="invalid log_level 'LOUD'.*UNKNOWN, FATAL, ERROR, WARN"):
        log.parse_level("LOUD")
    with pytest.raises(ValueError):
        log.setup_logging("STDOUT", "verbose")


# ---- destinations -------------------------------------------------------------------------------


def test_file_destination_filters_levels(tmp_path: Path) -> None:
    path = tmp_path / "core.log"
    log.setup_logging(str(path), "WARN")
    logger.info("not shown")
    logger.warning("careful")
    logger.error("broken")
    lines = _lines(path)
    assert [LINE.match(line)["msg"] for line in lines] == ["careful", "broken"]  # type: ignore[index]
    assert [LINE.match(line)["level"] for line in lines] == ["W", "E"]  # type: ignore[index]


def test_file_is_appended(tmp_path: Path) -> None:
    path = tmp_path / "core.log"
    path.write_text("existing line\n")
    log.setup_logging(str(path), "INFO")
    logger.info("new line")
    assert _lines(path)[0] == "existing line"
    assert _lines(path)[1].endswith("[I] new line")


def test_unopenable_file_falls_back_to_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-dir" / "core.log"
    handler = log.setup_logging(str(missing), "INFO")
    assert isinstance(handler, logging.StreamHandler)
    logger.info("still logged")
    out = capsys.readouterr().out
    assert f"Log file {missing} cannot be opened" in out
    assert "[W]" in out
    assert "[I] still logged" in out
    assert not missing.parent.exists()


def test_setup_again_replaces_the_destination(tmp_path: Path) -> None:
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    log.setup_logging(str(first), "INFO")
    logger.info("one")
    log.setup_logging(str(second), "INFO")
    logger.info("two")
    assert [line[-3:] for line in _lines(first)] == ["one"]
    assert [line[-3:] for line in _lines(second)] == ["two"]


def test_secrets_are_redacted_in_every_line(tmp_path: Path) -> None:
    path = tmp_path / "core.log"
    log.setup_logging(str(path), "INFO")
    logger.info("input %s", {"ssh_password": "hunter2", "task_id": "t-1"})
    logger.info("connecting with password=%s", "s3cr3t")
    try:
        raise RuntimeError("bad token: abc123xyz")
    except RuntimeError:
        logger.exception("request failed")
    text = path.read_text()
    for secret in ("hunter2", "s3cr3t", "abc123xyz"):
        assert secret not in text
    assert f"'ssh_password': '{FILTERED}'" in text
    assert "'task_id': 't-1'" in text
    assert f"password={FILTERED}" in text
    assert "Traceback (most recent call last)" in text
    assert f"RuntimeError: bad token: {FILTERED}" in text


def test_rolling_file(tmp_path: Path) -> None:
    path = tmp_path / "core.log"
    handler = log.setup_logging(str(path), "INFO", rolling_size=1, rolling_keep=2)
    assert isinstance(handler, logging.handlers.RotatingFileHandler)
    assert handler.maxBytes == 1024 * 1024 and handler.backupCount == 2
    logger.info("x" * 600_000)
    logger.info("y" * 600_000)
    assert (tmp_path / "core.log.1").exists()


def test_rolling_file_by_age(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "core.log"
    handler = log.setup_logging(str(path), "INFO", rolling_size=1, rolling_keep=2, rolling_age=60)
    logger.info("first minute")
    assert not (tmp_path / "core.log.1").exists()
    later = time.time() + 61
    monkeypatch.setattr(log.time, "time", lambda: later)
    logger.info("a minute later")
    assert "first minute" in (tmp_path / "core.log.1").read_text()
    assert "a minute later" in path.read_text() and "first minute" not in path.read_text()
    assert handler.rollover_at == pytest.approx(later + 60)


@pytest.mark.parametrize(
    ("age", "opened", "due"),
    [
        ("daily", dt.datetime(2026, 11, 26, 15, 30), dt.datetime(2026, 11, 27)),
        ("weekly", dt.datetime(2026, 11, 26, 15, 30), dt.datetime(2026, 11, 30)),  # a Monday
        ("monthly", dt.datetime(2026, 12, 31, 23, 0), dt.datetime(2027, 1, 1)),
        (3600, dt.datetime(2026, 11, 26, 15, 30), dt.datetime(2026, 11, 26, 16, 30)),
    ],
)
def test_next_rollover(age: str | int, opened: dt.datetime, due: dt.datetime) -> None:
    assert log.next_rollover(opened.timestamp(), age) == due.timestamp()


@pytest.mark.parametrize("age", ["fortnightly", 0, -5, True])
def test_bad_rolling_age(age: object) -> None:
    with pytest.raises(ValueError, match="file_rolling_age"):
        log.rolling_age_seconds(age)  # type: ignore[arg-type]


def test_reopen_after_logrotate_rename(tmp_path: Path) -> None:
    path = tmp_path / "core.log"
    log.setup_logging(str(path), "INFO")
    logger.info("before rotation")
    rotated = tmp_path / "core.log.1"
    path.rename(rotated)
    logger.info("still the old file")
    assert log.reopen_logs() == 1
    logger.info("after rotation")
    assert [line.split("] ", 1)[1] for line in _lines(rotated)] == [
        "before rotation",
        "still the old file",
    ]
    new_lines = _lines(path)
    assert new_lines[-1].endswith("after rotation")
    assert not any("before rotation" in line for line in new_lines)


def test_reopen_is_a_no_op_for_stdout() -> None:
    log.setup_logging("STDOUT", "INFO")
    assert log.reopen_logs() == 0


async def test_sigusr1_reopens_the_log_file(tmp_path: Path) -> None:
    path = tmp_path / "core.log"
    log.setup_logging(str(path), "INFO")
    loop = asyncio.get_running_loop()
    log.install_sigusr1(loop)
    try:
        logger.info("first")
        path.rename(tmp_path / "core.log.1")
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(200):
            if path.exists():
                break
            await asyncio.sleep(0.01)
        logger.info("second")
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    lines = _lines(path)
    assert any(f"Reopened log file {path}" in line for line in lines)
    assert lines[-1].endswith("[I] second")


def _journal_fields(datagram: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    data = datagram
    while data:
        line_end = data.index(b"\n")
        head = data[:line_end]
        if b"=" in head:
            name, value = head.split(b"=", 1)
            data = data[line_end + 1 :]
        else:
            name = head
            (size,) = struct.unpack("<Q", data[line_end + 1 : line_end + 9])
            value = data[line_end + 9 : line_end + 9 + size]
            data = data[line_end + 9 + size + 1 :]
        fields[name.decode()] = value.decode()
    return fields


def test_journal_destination(tmp_path: Path) -> None:
    path = str(tmp_path / "journal.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journal:
        journal.bind(path)
        journal.settimeout(5)
        log.setup_logging("JOURNALD", "INFO", journal_socket=path, name="spdc-test")
        token = log.request_id.set("feedfacecafe")
        try:
            logger.warning("first line\nsecond line password=x")
        finally:
            log.request_id.reset(token)
        fields = _journal_fields(journal.recv(65536))
    assert fields["MESSAGE"] == f"feedface [W] first line\nsecond line password={FILTERED}"
    assert fields["PRIORITY"] == "4"
    assert fields["SYSLOG_IDENTIFIER"] == "spdc-test"
    assert fields["REQUEST_ID"] == "feedfacecafe"
    assert fields["LOGGER"] == logger.name


def test_journal_without_socket_falls_back_to_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    handler = log.setup_logging("JOURNAL", "INFO", journal_socket=str(tmp_path / "none.sock"))
    assert isinstance(handler, logging.StreamHandler)
    logger.info("via stdout")
    out = capsys.readouterr().out
    assert "Journal socket" in out and "[I] via stdout" in out


def test_syslog_destination_uses_local5(tmp_path: Path) -> None:
    path = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind(path)
        syslog.settimeout(5)
        log.setup_logging("SYSLOG", "INFO", syslog_socket=path, name="spdc-test")
        logger.info("to syslog")
        message = syslog.recv(65536)
    # priority = facility local5 (21) * 8 + info (6)
    assert message.startswith(f"<174>spdc-test[{os.getpid()}]: ".encode())
    assert message.rstrip(b"\0").endswith(b"[I] to syslog")


def test_syslog_without_socket_falls_back_to_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    handler = log.setup_logging("SYSLOG", "INFO", syslog_socket=str(tmp_path / "none.sock"))
    assert isinstance(handler, logging.StreamHandler)
    assert "Syslog socket" in capsys.readouterr().out


# ---- request middleware -------------------------------------------------------------------------


async def _app(scope: Any, receive: Any, send: Any) -> None:
    path = scope["path"]
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    logger.info("handling %s", path)
    if path == "/boom":
        raise RuntimeError("database password=hunter2 exploded")
    if path == "/slow":
        await asyncio.sleep(0.05)
    payload = json.dumps({"request_id": log.current_request_id()}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 201 if body else 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _client() -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=log.RequestLogMiddleware(_app))
    return httpx.AsyncClient(transport=transport, base_url="http://proxy")


def _request_lines(path: Path, rid: str) -> list[str]:
    return [line for line in _lines(path) if f" {rid[:8]} [" in line]


async def test_request_id_is_echoed_and_in_every_line(tmp_path: Path) -> None:
    path = tmp_path / "core.log"
    log.setup_logging(str(path), "INFO")
    async with _client() as client:
        response = await client.get(
            "/dynflow/tasks/count",
            params={"state": "running"},
            headers={"X-Request-Id": "abc123def456"},
        )
    assert response.headers["x-request-id"] == "abc123def456"
    assert response.json() == {"request_id": "abc123def456"}
    lines = _request_lines(path, "abc123def456")
    assert len(lines) == 3
    assert lines[0].endswith("[I] Started GET /dynflow/tasks/count state=running")
    assert lines[1].endswith("[I] handling /dynflow/tasks/count")
    assert re.search(
        r"\[I\] Finished GET /dynflow/tasks/count with 200 \(\d+\.\d{2} ms\)$", lines[2]
    )
    assert log.current_request_id() is None  # reset after the request


async def test_request_id_is_generated_and_sanitised(tmp_path: Path) -> None:
    log.setup_logging(str(tmp_path / "core.log"), "INFO")
    async with _client() as client:
        generated = await client.get("/x")
        dirty = await client.get("/x", headers={"X-Request-Id": "ab c<d>e;f"})
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    assert dirty.headers["x-request-id"] == "abcdef"


async def test_concurrent_requests_keep_their_own_ids(tmp_path: Path) -> None:
    path = tmp_path / "core.log"
    log.setup_logging(str(path), "INFO")
    async with _client() as client:
        responses = await asyncio.gather(
            *(client.get("/slow", headers={"X-Request-Id": f"req{i:05d}"}) for i in range(5))
        )
    assert [r.json()["request_id"] for r in responses] == [f"req{i:05d}" for i in range(5)]
    for i in range(5):
        lines = _request_lines(path, f"req{i:05d}")
        assert [line.split("] ", 1)[1].split(" ")[0] for line in lines] == [
            "Started",
            "handling",
            "Finished",
        ]


async def test_unhandled_exception_answers_500_json(tmp_path: Path) -> None:
    path = tmp_path / "core.log"
    log.setup_logging(str(path), "INFO")
    async with _client() as client:
        response = await client.post("/boom", headers={"X-Request-Id": "deadbeef0001"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"] == "deadbeef0001"
    assert response.json() == {"error": "Internal error, see the log (request deadbeef0001)"}
    text = path.read_text()
    assert "deadbeef [E] Error processing POST /boom (request deadbeef0001)" in text
    assert "Traceback (most recent call last)" in text
    assert "hunter2" not in text
    assert re.search(r"deadbeef \[I\] Finished POST /boom with 500 \(\d+\.\d{2} ms\)", text)


async def test_debug_logs_redacted_headers_and_body(tmp_path: Path) -> None:
    path = tmp_path / "core.log"
    log.setup_logging(str(path), "DEBUG")
    async with _client() as client:
        response = await client.post(
            "/dynflow/tasks/launch",
            json={"operation": "ssh", "input": {"ssh_password": "hunter2", "task_id": "t1"}},
            headers={"Authorization": "Basic dXNlcjpwYXNzd29yZA==", "X-Request-Id": "cafe0001"},
        )
    assert response.status_code == 201
    text = path.read_text()
    assert "hunter2" not in text and "dXNlcjpwYXNzd29yZA" not in text
    body_line = next(line for line in text.splitlines() if "[D] Body: " in line)
    logged = json.loads(body_line.split("[D] Body: ", 1)[1])
    assert logged == {"operation": "ssh", "input": {"ssh_password": FILTERED, "task_id": "t1"}}
    headers_line = next(line for line in text.splitlines() if "[D] Headers: " in line)
    assert f"('authorization', '{FILTERED}')" in headers_line


async def test_info_does_not_log_headers_or_bodies(tmp_path: Path) -> None:
    path = tmp_path / "core.log"
    log.setup_logging(str(path), "INFO")
    async with _client() as client:
        await client.post("/x", json={"a": 1})
    text = path.read_text()
    assert "Body:" not in text and "Headers:" not in text
    assert "Started POST /x" in text


async def test_debug_log_of_a_deeply_nested_body_is_not_a_500(tmp_path: Path) -> None:
    """The debug body log parses JSON to redact it: nesting too deep for the parser is logged
    as text (redacted), and the request goes on to the application."""
    path = tmp_path / "core.log"
    log.setup_logging(str(path), "DEBUG")
    deep = "[" * 5000 + '"ssh_password=hunter2"' + "]" * 5000
    async with _client() as client:
        response = await client.post(
            "/dynflow/tasks/launch",
            content=deep.encode(),
            headers={"Content-Type": "application/json", "X-Request-Id": "cafe0002"},
        )
    assert response.status_code == 201
    text = path.read_text()
    assert "Traceback" not in text
    assert any("[D] Body: [[[" in line for line in text.splitlines())
