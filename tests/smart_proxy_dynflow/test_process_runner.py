"""ProcessRunner with real processes (spec §4.7, §9.1 cases 39-54 adapted)."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from smart_proxy_dynflow.process_runner import ProcessRunner
from smart_proxy_dynflow.runner import SuspendedAction

ACTION = SuspendedAction("plan", 1)


async def run_to_end(
    runner: ProcessRunner, *, limit: float = 5.0
) -> tuple[list[dict[str, Any]], int | str]:
    """Start the runner, refresh until it reports an exit status, close it."""
    records: list[dict[str, Any]] = []
    await runner.start()
    try:
        async with asyncio.timeout(limit):
            while True:
                await runner.refresh()
                update = runner.generate_updates().get(ACTION)
                if update is not None:
                    records.extend(update.output)
                    if update.exit_status is not None:
                        return records, update.exit_status
                await asyncio.sleep(0.01)
    finally:
        await runner.close()


def text_of(records: list[dict[str, Any]], output_type: str) -> str:
    return "".join(r["output"] for r in records if r["output_type"] == output_type)


async def wait_for(predicate, limit: float = 5.0) -> None:
    async with asyncio.timeout(limit):
        while not predicate():
            await asyncio.sleep(0.01)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_true_exits_zero() -> None:  # cases 39, 40
    records, status = await run_to_end(ProcessRunner(["true"], suspended_action=ACTION))
    assert status == 0
    assert records == []


async def test_captures_stdout_and_stderr() -> None:  # cases 41, 42, 44, 45
    runner = ProcessRunner(["sh", "-c", "echo hello; echo oops >&2"], suspended_action=ACTION)
    records, status = await run_to_end(runner)
    assert status == 0
    assert text_of(records, "stdout") == "hello\n"
    assert text_of(records, "stderr") == "oops\n"
    assert all(isinstance(r["timestamp"], float) for r in records)


async def test_exit_code_five() -> None:  # case 43
    _, status = await run_to_end(ProcessRunner(["sh", "-c", "exit 5"], suspended_action=ACTION))
    assert status == 5


async def test_stdin_fed_to_bc() -> None:  # case 46 adapted
    runner = ProcessRunner(["bc"], stdin="2 + 3\n10 - 1\n", suspended_action=ACTION)
    records, status = await run_to_end(runner)
    assert status == 0
    assert text_of(records, "stdout") == "5\n9\n"


async def test_stdin_bytes_fed_to_cat() -> None:
    data = "héllo wörld\n" * 5000  # larger than one pipe buffer
    runner = ProcessRunner(["cat"], stdin=data.encode(), suspended_action=ACTION)
    records, status = await run_to_end(runner)
    assert status == 0
    assert text_of(records, "stdout") == data


async def test_unread_stdin_does_not_hang() -> None:
    runner = ProcessRunner(["true"], stdin=b"x" * 1_000_000, suspended_action=ACTION)
    _, status = await run_to_end(runner)
    assert status == 0


async def test_env_and_cwd(tmp_path: Path) -> None:
    runner = ProcessRunner(
        ["sh", "-c", 'echo "$GREETING"; pwd'],
        env={"GREETING": "hi there", "PATH": os.environ["PATH"]},
        cwd=str(tmp_path),
        suspended_action=ACTION,
    )
    records, status = await run_to_end(runner)
    assert status == 0
    assert text_of(records, "stdout") == f"hi there\n{tmp_path}\n"


async def test_missing_executable_is_an_exception() -> None:  # cases 52-54 adapted
    runner = ProcessRunner(["no-such-command-xyz", "--flag"], suspended_action=ACTION)
    records, status = await run_to_end(runner)
    assert status == "EXCEPTION"
    assert len(records) == 1
    message = records[0]["output"]
    assert records[0]["output_type"] == "debug"
    assert message.startswith(
        "Error running command 'no-such-command-xyz --flag': FileNotFoundError"
    )
    assert "No such file or directory" in message
    assert runner.process is None


async def test_not_executable_is_an_exception(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(stat.S_IRUSR | stat.S_IWUSR)
    records, status = await run_to_end(ProcessRunner([str(script)], suspended_action=ACTION))
    assert status == "EXCEPTION"
    assert "PermissionError" in records[0]["output"]


async def test_killed_by_signal_is_128_plus_signal() -> None:
    runner = ProcessRunner(["sh", "-c", "kill -9 $$"], suspended_action=ACTION)
    _, status = await run_to_end(runner)
    assert status == 128 + signal.SIGKILL


async def test_kill_kills_the_whole_tree() -> None:
    runner = ProcessRunner(
        ["sh", "-c", "sleep 1000 & sleep 1000 & echo started; wait"], suspended_action=ACTION
    )
    await runner.start()
    try:
        assert runner.process is not None
        shell = psutil.Process(runner.process.pid)
        await wait_for(lambda: len(shell.children(recursive=True)) == 2)
        children = [child.pid for child in shell.children(recursive=True)]
        await runner.kill()
        async with asyncio.timeout(5):
            while runner.exit_status is None:
                await runner.refresh()
                await asyncio.sleep(0.01)
        assert runner.exit_status == 128 + signal.SIGTERM
        await wait_for(lambda: all(gone(pid) for pid in children))
        records = runner.generate_updates()[ACTION].output
        assert any(r["output_type"] == "debug" and "Killing" in r["output"] for r in records)
        assert text_of(records, "stdout") == "started\n"
    finally:
        await runner.close()
    assert all(gone(pid) for pid in children)


async def test_kill_escalates_to_sigkill() -> None:
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(1000)\n"
    )
    runner = ProcessRunner([sys.executable, "-c", code], suspended_action=ACTION)
    runner.kill_grace = 0.2
    await runner.start()
    try:
        await wait_for(lambda: "ready" in text_of(runner._output.raw_outputs, "stdout"))
        await runner.kill()
        async with asyncio.timeout(5):
            while runner.exit_status is None:
                await runner.refresh()
                await asyncio.sleep(0.01)
        assert runner.exit_status == 128 + signal.SIGKILL
    finally:
        await runner.close()


async def test_close_while_running_kills_the_group() -> None:
    runner = ProcessRunner(["sh", "-c", "sleep 1000 & wait"], suspended_action=ACTION)
    await runner.start()
    assert runner.process is not None
    shell = psutil.Process(runner.process.pid)
    await wait_for(lambda: len(shell.children()) == 1)
    child = shell.children()[0].pid
    await runner.close()
    assert runner.process.returncode == -signal.SIGKILL
    await wait_for(lambda: gone(child))
    assert runner.exit_status is None  # close reports nothing


async def test_multibyte_character_split_across_reads() -> None:
    code = (
        "import sys, time\n"
        "out = sys.stdout.buffer\n"
        "out.write('caf'.encode() + b'\\xc3'); out.flush()\n"
        "time.sleep(0.3)\n"
        "out.write(b'\\xa9 \\xe2\\x82'); out.flush()\n"
        "time.sleep(0.3)\n"
        "out.write(b'\\xac!'); out.flush()\n"
    )
    records, status = await run_to_end(
        ProcessRunner([sys.executable, "-c", code], suspended_action=ACTION)
    )
    assert status == 0
    stdout = [r["output"] for r in records if r["output_type"] == "stdout"]
    assert "".join(stdout) == "café €!"
    assert len(stdout) >= 2  # really arrived in several reads
    assert all("\ufffd" not in chunk for chunk in stdout)


async def test_invalid_utf8_is_replaced() -> None:
    code = "import sys; sys.stdout.buffer.write(b'a\\xffb')"
    records, _ = await run_to_end(
        ProcessRunner([sys.executable, "-c", code], suspended_action=ACTION)
    )
    assert text_of(records, "stdout") == "a\ufffdb"


async def test_large_output_is_complete() -> None:
    records, status = await run_to_end(
        ProcessRunner(["seq", "1", "50000"], suspended_action=ACTION)
    )
    assert status == 0
    assert text_of(records, "stdout") == "".join(f"{i}\n" for i in range(1, 50001))


async def test_timeout_interval_and_refresh_before_start() -> None:
    runner = ProcessRunner(["true"], timeout=2.5)
    assert runner.timeout_interval() == 2.5
    assert ProcessRunner(["true"]).timeout_interval() is None
    await runner.refresh()  # nothing started yet: nothing to report
    assert runner.exit_status is None
    await runner.close()


def test_command_must_be_a_sequence() -> None:
    with pytest.raises(TypeError):
        ProcessRunner("echo hi")  # type: ignore[arg-type]


async def test_background_child_holding_the_pipes_does_not_block_exit() -> None:
    runner = ProcessRunner(["sh", "-c", "echo parent; sleep 30 & echo $!"], suspended_action=ACTION)
    runner.drain_timeout = 0.1
    records, status = await run_to_end(runner)
    assert status == 0
    lines = text_of(records, "stdout").splitlines()
    assert lines[0] == "parent"
    background = int(lines[1])
    assert not gone(background)  # left running, like any background job of the command
    os.kill(background, signal.SIGKILL)
    await wait_for(lambda: gone(background))
