"""Runner for a local command (spec §4.7, asyncio subprocess instead of PTY/select).

The command runs in its own session (process group), so :meth:`ProcessRunner.kill`
reaches every process it spawned. Output is read by reader tasks as it arrives
and published as raw ``stdout``/``stderr`` chunks.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import shlex
import signal
from collections.abc import Mapping, Sequence

from smart_proxy_dynflow.runner import Runner, SuspendedAction

READ_CHUNK_SIZE = 64 * 1024


class ProcessRunner(Runner):
    """Runs ``command`` with pipes for stdin, stdout and stderr.

    ``stdin`` is written to the process and then closed; ``timeout`` (seconds) is
    returned by :meth:`timeout_interval`. A child killed by signal N exits with
    128+N; a command that cannot be spawned exits with "EXCEPTION".
    """

    kill_grace: float = 5.0
    """Seconds between SIGTERM and SIGKILL in :meth:`kill`."""

    drain_timeout: float = 1.0
    """How long refresh waits for the pipes to close once the process exited
    (a background grandchild may hold them open forever)."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        stdin: str | bytes | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        suspended_action: SuspendedAction | None = None,
        id: str | None = None,
    ) -> None:
        super().__init__(suspended_action=suspended_action, id=id)
        if isinstance(command, str):
            raise TypeError("command must be a sequence of arguments, not a string")
        self.command = list(command)
        self.stdin = stdin
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._timeout = timeout
        self.process: asyncio.subprocess.Process | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._writer: asyncio.Task[None] | None = None
        self._waiter: asyncio.Task[None] | None = None
        self._kill_task: asyncio.Task[None] | None = None

    @property
    def command_line(self) -> str:
        """The command as a shell-quoted string (for messages)."""
        return shlex.join(self.command)

    def timeout_interval(self) -> float | None:
        return self._timeout

    @property
    def running(self) -> bool:
        """True while the spawned process has not exited."""
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        """Spawn the process and start the reader (and stdin writer) tasks."""
        if self.process is not None:
            raise RuntimeError(f"{self} was already started")
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        except OSError as exc:  # FileNotFoundError, PermissionError, bad cwd, ...
            self.publish_exception(f"Error running command '{self.command_line}'", exc)
            return
        process = self.process
        assert process.stdout is not None and process.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(process.stdout, "stdout")),
            asyncio.create_task(self._read(process.stderr, "stderr")),
        ]
        self._writer = asyncio.create_task(self._write_stdin())
        self._waiter = asyncio.create_task(self._wait_exit())

    async def _wait_exit(self) -> None:
        """Report the exit at once instead of at the next refresh tick."""
        assert self.process is not None
        await self.process.wait()
        await asyncio.wait(self._readers, timeout=self.drain_timeout)
        self.news()

    async def _write_stdin(self) -> None:
        stream = self.process.stdin if self.process is not None else None
        if stream is None:
            return
        data = self.stdin
        if isinstance(data, str):
            data = data.encode()
        try:
            if data:
                stream.write(data)
                await stream.drain()
        except (BrokenPipeError, ConnectionResetError):
            self.logger.debug("%s: process closed its stdin early", self)
        finally:
            stream.close()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await stream.wait_closed()

    async def _read(self, stream: asyncio.StreamReader, output_type: str) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            chunk = await stream.read(READ_CHUNK_SIZE)
            text = decoder.decode(chunk, final=not chunk)
            if text:
                self.publish_data(text, output_type)
            if not chunk:
                return

    async def refresh(self) -> None:
        """Publish the exit status once the process exited and its output was read."""
        process = self.process
        if process is None or process.returncode is None or self.exit_status is not None:
            return
        pending = [task for task in self._readers if not task.done()]
        if pending:
            _, pending_set = await asyncio.wait(pending, timeout=self.drain_timeout)
            for task in pending_set:
                self.logger.debug("%s: output pipe still open after exit, not reading on", self)
                task.cancel()
        returncode = process.returncode
        self.publish_exit_status(128 - returncode if returncode < 0 else returncode)

    async def kill(self) -> None:
        """SIGTERM the process group, SIGKILL it after :attr:`kill_grace` seconds."""
        if not self.running:
            return
        self.publish_data(f"Killing the process '{self.command_line}'", "debug")
        self._signal_group(signal.SIGTERM)
        if self._kill_task is None:
            self._kill_task = asyncio.create_task(self._kill_after_grace())

    async def _kill_after_grace(self) -> None:
        await asyncio.sleep(self.kill_grace)
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, signum: int) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass
        except PermissionError as exc:  # the group id got reused (very unlikely)
            self.logger.warning("%s: cannot signal process group: %s", self, exc)

    async def close(self) -> None:
        """SIGKILL the group if running or killed, stop the helper tasks and reap the process."""
        process = self.process
        # After a kill also finish off group members that survived the SIGTERM.
        if process is not None and (process.returncode is None or self._kill_task is not None):
            self._signal_group(signal.SIGKILL)
        tasks = [*self._readers, self._writer, self._kill_task, self._waiter]
        for task in tasks:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(task for task in tasks if task is not None), return_exceptions=True)
        self._kill_task = None
        if process is not None:
            await process.wait()
            # Pipes inherited by a surviving grandchild keep the transport open.
            transport = getattr(process, "_transport", None)
            if transport is not None:
                transport.close()
