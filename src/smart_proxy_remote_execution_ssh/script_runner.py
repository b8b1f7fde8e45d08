"""The push-over-SSH runner (§5): runs a script on a host with asyncssh, in the event loop.

One SSH connection per job and, in the common case, ONE exec channel for the whole job: the
launch command (see :mod:`.wrapper`) sets up ``<remote_working_dir>/foreman-ssh-cmd-<id>/``,
runs the preflight checks, starts the wrapper and streams its output, and removes the directory
once the proxy stored the exit code (:meth:`Runner.result_stored`; until then a crash of the
proxy leaves the result on the host for :meth:`ScriptRunner.reattach`). A user switch that
needs a password adds a PTY channel for the prompt. ``kill`` and ``reattach`` use channels
of their own.

Output is published as it arrives (``stdout`` records, decoded as UTF-8 with replacement
characters), and the dispatcher is asked to deliver it at most every :data:`NEWS_INTERVAL`
seconds. The exit status is the script's; 255 when the connection was lost while the job ran
(the original's ``ssh`` exits 255 then), 0 when it was lost after a power action announced
itself (``restart host`` / ``shutdown host``, §5.11), ``EXCEPTION`` when the job could not be
set up, a host that cannot be reached included (as the original: its ``start`` raises and
publishes "Error initializing command: <Class> - <message>").

``kill`` (cancel, and ``timeout`` after its debug line) SIGTERMs the job's whole process
group on the host; the job then ends with 143.

The job does not depend on the proxy's connection: the wrapper records ``pid``, ``output`` and
``exit_code`` on the host, so after a restart of the proxy :meth:`ScriptRunner.reattach` reads
them (or follows the still running job) and reports the real result. Closing a runner whose
job has not finished (the service is stopping) only disconnects; the job goes on.

Crash safety (the runner id is the same for every run of a step, see
:class:`~smart_proxy_dynflow.runner_action.RunnerAction`): a launch that finds the job's
directory re-attaches instead (``exists``); a re-attach that finds no directory, or one whose
launch never started the wrapper, launches the job, unless the proxy had stored that the job
started (``started``: then its result is unknown, as after a reboot of the host that cleared
the directory). So a job is started once and a script never twice.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import re
import signal
from typing import Any

import asyncssh

from smart_proxy_dynflow.continuous_output import format_exception
from smart_proxy_dynflow.runner import EXCEPTION_STATUS, Runner, SuspendedAction

from .connection import HostUnreachable, StartSlot, connect
from .known_hosts import KnownHosts
from .options import ScriptOptions
from .user_method import PasswordResponder, SecretFilter, UserMethod, user_method
from .wrapper import (
    COMMAND_LIMIT,
    cleanup_command,
    kill_command,
    launch_command,
    new_marker,
    pty_run_command,
    reattach_command,
    remote_dir,
)

NEWS_INTERVAL = 0.05
"""At most one early-delivery request per this many seconds while output streams in."""

COMMAND_TIMEOUT = 60.0
"""Seconds a helper command (kill, cleanup, the PTY setup) may take."""

CLOSE_TIMEOUT = 5.0

SETUP_TIMEOUT = 120.0
"""Seconds the setup on the host (preflight, user switch, upload) may take before the job
fails: a user switch that waits for an unexpected prompt must not hang the job forever."""

EXPECTED_POWER_ACTION_MESSAGES = ("restart host", "shutdown host")

GONE_MESSAGE = "The job's working directory is gone on the host; its result is unknown"
NOT_STARTED_MESSAGE = (
    "The job was not started on the host before the proxy stopped; its script did not run"
)

_PREAMBLE_LIMIT = 64 * 1024
_DIAG_LINES = 20
_FAIL_MESSAGES = {
    "mkdir": "Unable to create directory {dir} on remote system, exit code: {code}",
    "upload": "Unable to upload file to {dir} on remote system, exit code: {code}",
    "exec": "Failed to execute script on remote machine, exit code: {code}.",
    "user": "Failed to change to effective user, exit code: {code}",
}


def _partial_suffix(text: str, needle: str) -> int:
    for length in range(min(len(text), len(needle) - 1), 0, -1):
        if needle.startswith(text[-length:]):
            return length
    return 0


class _JobChannel(asyncssh.SSHClientSession[bytes]):
    """One channel running a launch/PTY/reattach command; parses markers, publishes output.

    ``pty``: everything arrives on stdout (markers included); otherwise markers other than
    ``started`` come on stderr. Phases: ``preamble`` (login noise, setup, user preflight; not
    published) → ``output`` (published) → ``done`` (after the exit marker).
    """

    def __init__(
        self,
        runner: ScriptRunner,
        marker: str,
        *,
        pty: bool = False,
        responder: PasswordResponder | None = None,
        secret: str | None = None,
        skip_chars: int = 0,
        ack: bool = False,
    ) -> None:
        self.runner = runner
        self.marker = marker
        self.pty = pty
        self.responder = responder
        self.filter = SecretFilter(secret)
        self.skip_chars = skip_chars
        self.ack = ack
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None
        self.phase = "preamble"
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.lost: BaseException | None = None
        self.exit_marker: str | None = None
        self.exit_status: int | None = None
        self.exit_signal: str | None = None
        self.removes_dir = False
        """The command removes the job directory itself before it exits."""
        self.closed_event = asyncio.Event()
        self.failure: str | None = None
        self.diag: list[str] = []
        self._preamble = ""
        self._fed = 0  # how much of the preamble the responder has seen
        self._newline_after_answer = False
        self._stderr = b""
        self._pending = ""  # output held back: could be the start of the exit marker
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._marker_re = re.compile(re.escape(marker) + r" (\w+)(?: (\S+))?(?: (\S+))?\r?\n")

    # -- asyncssh callbacks --------------------------------------------------

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self.chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        try:
            if datatype == asyncssh.EXTENDED_DATA_STDERR and not self.pty:
                self._stderr_received(data)
            else:
                self._stdout_received(data)
        except Exception:  # never let a parsing bug kill the connection
            self.runner.logger.exception("%s: cannot process output", self.runner)

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.exit_signal = signal

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost = exc
        self.closed_event.set()
        if self.phase == "output":
            self._flush_output()
        if not self.started.done():
            self._fail_start(self._closed_before_start_message())
        self.runner.channel_closed(self)

    # -- stdout --------------------------------------------------------------

    def _stdout_received(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        if self.phase == "preamble":
            self._preamble_text(text)
        elif self.phase == "output":
            self._output_text(text)
        elif self.pty:
            self.runner.logger.debug("%s: after the job: %r", self.runner, self.filter.clean(text))

    def _respond(self, text: str) -> str:
        """Answer a password prompt in ``text``; returns ``text`` without the answered prompt."""
        if self.responder is None or not text:
            return text
        answer = self.responder.feed(text)
        if answer is None:
            return text
        if self.chan is not None and not self.chan.is_closing():
            self.chan.write(answer)
        if self.responder.repeat_sent and answer == self.responder.on_repeat:
            self.runner.logger.debug("%s: the password was not accepted", self.runner)
            return text
        self.runner.logger.debug("%s: answered the password prompt", self.runner)
        self._newline_after_answer = True
        prompt = self.responder.last_prompt
        return text.replace(prompt, "", 1) if prompt else text

    def _preamble_text(self, text: str) -> None:
        self._preamble += text
        while self.phase == "preamble":
            match = self._marker_re.search(self._preamble)
            end = match.start() if match is not None else len(self._preamble)
            if end > self._fed:
                # Prompts come before (never inside) a marker line: answer them in order.
                self._respond(self._preamble[self._fed : end])
                self._fed = end
            if match is None:
                break
            self._log_diag(self._preamble[: match.start()])
            rest = self._preamble[match.end() :]
            self._preamble, self._fed = "", 0
            word, arg1, arg2 = match.groups()
            if word == "started":
                self.phase = "output"
                if self.responder is not None:
                    # The script's own user switch prompts again: answer it once more.
                    self.responder.reset()
                    self.responder.on_repeat = None
                if not self.started.done():
                    self.started.set_result(None)
                if rest:
                    self._output_text(rest)
                return
            self._preamble = rest
            self._marker(word, arg1, arg2)
        if len(self._preamble) > _PREAMBLE_LIMIT:
            cut = len(self._preamble) - _PREAMBLE_LIMIT
            self._log_diag(self._preamble[:cut])
            self._preamble = self._preamble[cut:]
            self._fed = max(0, self._fed - cut)

    def _output_text(self, text: str) -> None:
        # The exit marker comes on the output's stream: hold back what could be its start.
        text = self._pending + text
        index = text.find(self.marker)
        if index >= 0:
            line_end = text.find("\n", index)
            if line_end < 0:
                self._publish(self._respond(text[:index]))
                self._pending = text[index:]
                return
            self._publish(self._respond(text[:index]))
            self._pending = ""
            match = self._marker_re.match(text, index)
            self.phase = "done"
            self._flush_output()
            if match is not None:
                self._marker(*match.groups())
            return
        keep = _partial_suffix(text, self.marker)
        self._pending = text[len(text) - keep :] if keep else ""
        text = text[: len(text) - keep] if keep else text
        self._publish(self._respond(text))

    def _publish(self, text: str) -> None:
        if self._newline_after_answer and text:
            # The newline the prompting program prints after the (unechoed) password: it is
            # on the terminal only, not in the job's output file.
            self._newline_after_answer = False
            if text.startswith("\r\n"):
                text = text[2:]
            elif text.startswith("\n"):
                text = text[1:]
        self._emit(self.filter.feed(text))

    def _emit(self, text: str) -> None:
        if not text:
            return
        if self.skip_chars:
            skipped = min(self.skip_chars, len(text))
            self.skip_chars -= skipped
            text = text[skipped:]
            if not text:
                return
        self.runner.stdout_received(text)

    def _flush_output(self) -> None:
        tail = self._decoder.decode(b"", final=True)
        if self._pending:
            tail = self._pending + tail
            self._pending = ""
        if tail:
            self._publish(tail)
        self._emit(self.filter.flush())

    # -- stderr (no PTY) -----------------------------------------------------

    def _stderr_received(self, data: bytes) -> None:
        self._stderr += data
        *lines, self._stderr = self._stderr.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", errors="replace")
            if line.startswith(self.marker + " "):
                word, _, args = line[len(self.marker) + 1 :].partition(" ")
                arg1, _, arg2 = args.partition(" ")
                self._marker(word, arg1 or None, arg2 or None)
            elif self.phase == "output":
                self.runner.stderr_received(line + "\n")
            else:
                self._log_diag(line)
        if len(self._stderr) > _PREAMBLE_LIMIT:
            self._log_diag(self._stderr.decode("utf-8", errors="replace"))
            self._stderr = b""

    # -- markers -------------------------------------------------------------

    def _marker(self, word: str, arg1: str | None, arg2: str | None) -> None:
        runner = self.runner
        if word == "exit":
            # On stdout after the last output: the job's output is complete. The directory is
            # removed only when the proxy acknowledges it (see ScriptRunner.close).
            self.exit_marker = arg1
            self.phase = "done"
            runner.exit_seen(self)
        elif word == "exists":
            self.failure = word
            self.phase = "done"
            if not self.started.done():
                self.started.set_result(None)
        elif word == "fail":
            template = _FAIL_MESSAGES.get(arg1 or "", "Preparing the job failed at {stage}")
            self._fail_start(
                template.format(dir=runner.remote_dir, code=arg2, stage=arg1), cleaned=True
            )
        elif word == "user":
            if arg1 != "0":
                self._fail_start(_FAIL_MESSAGES["user"].format(code=arg1), cleaned=True)
        elif word in ("gone", "nopid"):
            self.failure = word
            self.phase = "done"
            if not self.started.done():
                self.started.set_result(None)
        elif word == "ready":
            pass
        else:
            runner.logger.debug("%s: unknown marker %r", runner, word)

    def _fail_start(self, message: str, *, cleaned: bool = False) -> None:
        self.phase = "done"
        if cleaned:
            self.removes_dir = True  # the command removes the directory (when cleanup is on)
        if not self.started.done():
            self.started.set_exception(RuntimeError(message))
            self.started.exception()  # retrieved by start(); no warning when it is not

    def _closed_before_start_message(self) -> str:
        if self.lost is not None:
            return f"The connection was lost while setting up the job: {self.lost}"
        status = self.exit_status if self.exit_status is not None else self.exit_signal
        detail = "; ".join(self.diag[-5:])
        message = f"Setting up the job on the host failed (exit status {status})"
        return f"{message}: {detail}" if detail else message

    def _log_diag(self, text: str) -> None:
        text = self.filter.clean(text).strip()
        if not text:
            return
        self.runner.logger.debug("%s: %s", self.runner, text)
        self.diag.extend(line for line in text.splitlines() if line.strip())
        del self.diag[:-_DIAG_LINES]


class ScriptRunner(Runner):
    """Runs ``options.script`` on ``options.hostname`` over SSH (see the module doc)."""

    recoverable = True

    def __init__(
        self,
        options: ScriptOptions,
        *,
        known_hosts: KnownHosts,
        start_slots: asyncio.Semaphore | None = None,
        handshakes: asyncio.Semaphore | None = None,
        suspended_action: SuspendedAction | None = None,
        id: str | None = None,
        published_chars: int = 0,
        started: bool = False,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(suspended_action=suspended_action, id=id)
        self.options = options
        self.started_before = started
        """The proxy stored that this job started on the host (in an earlier run)."""
        self.known_hosts = known_hosts
        self.start_slots = start_slots or asyncio.Semaphore(1)
        # Shared by the jobs of a core (RexState.handshake_slots); None: not bounded.
        self.handshakes = handshakes
        self.published_chars = published_chars
        self.logger = logger or logging.getLogger("smart_proxy_remote_execution_ssh.runner")
        self.user_method: UserMethod = user_method(
            options.ssh_user, options.effective_user, options.effective_user_method
        )
        self._conn: asyncssh.SSHClientConnection | None = None
        self._channel: _JobChannel | None = None
        self._dir_used = False
        self._cleaned = False
        self._power_action = False
        self._news_handle: asyncio.TimerHandle | None = None
        self._last_news = 0.0

    def __repr__(self) -> str:
        return f"<ScriptRunner id={self.id} host={self.options.hostname}>"

    @property
    def remote_dir(self) -> str:
        """``<remote_working_dir>/foreman-ssh-cmd-<runner id>`` on the host."""
        return remote_dir(self.options.remote_working_dir, self.id)

    @property
    def uses_pty(self) -> bool:
        """True with a user switch (sudo, dzdo, su): its preflight and the job run on a
        terminal, as the original's ``ssh -tt`` (hosts whose sudoers say ``Defaults
        requiretty`` refuse a NOPASSWD switch without one; a password is typed on it)."""
        return self.user_method.switches_user

    def timeout_interval(self) -> float | None:
        return self.options.execution_timeout_interval

    # -- hooks ---------------------------------------------------------------

    async def start(self) -> None:
        """Connect, prepare the job directory and launch the wrapper (in a start slot)."""
        slot = StartSlot(self.start_slots)
        try:
            await self._start(slot)
        finally:
            slot.give_back()

    async def _start(self, slot: StartSlot) -> None:
        if not await self._connect(slot):
            return
        try:
            if not await self._launch_job():
                # An earlier run of this step launched the job already (the proxy crashed
                # before it stored that): follow that job instead of starting it again.
                self.logger.info("%s: the job was launched before; re-attaching", self)
                await self._follow(may_launch=False)
        except Exception as exc:  # noqa: BLE001 - any failure ends the job with it, as the original
            self.publish_exception("Error initializing command", exc)

    async def reattach(self) -> None:
        """After a restart of the proxy: report the job's recorded (or still coming) result."""
        slot = StartSlot(self.start_slots)
        try:
            await self._reattach(slot)
        finally:
            slot.give_back()

    async def _reattach(self, slot: StartSlot) -> None:
        if not await self._connect(slot, "Error re-attaching to the job"):
            return
        try:
            await self._follow(may_launch=not self.started_before)
        except Exception as exc:  # noqa: BLE001 - any failure ends the job with it (as _start)
            self.publish_exception("Error re-attaching to the job", exc)

    async def _launch_job(self, *, replace: bool = False) -> bool:
        """Launch the job; False when its directory exists already (launched before)."""
        if self.uses_pty:
            return await self._launch_with_pty(replace=replace)
        return await self._launch(replace=replace)

    async def _follow(self, *, may_launch: bool) -> None:
        """Follow the job's recorded output to its exit code. A job that never started (no
        directory, or no wrapper ever ran in it) is launched when ``may_launch``."""
        marker = new_marker()
        channel = _JobChannel(
            self,
            marker,
            skip_chars=self.published_chars,
            ack=self.options.cleanup_working_dirs,
        )
        command = reattach_command(
            directory=self.remote_dir, marker=marker, cleanup=self.options.cleanup_working_dirs
        )
        await self._open(channel, command)
        await self._started(channel)
        if channel.failure is None:
            self._dir_used = True
            self.publish_started()
            return
        if may_launch:
            self.logger.info(
                "%s: the job had not started on the host (%s); starting it", self, channel.failure
            )
            if await self._launch_job(replace=channel.failure == "nopid"):
                return
            raise RuntimeError("The job's directory appeared on the host while starting it")
        if channel.failure == "gone":
            self._cleaned = True
            self.publish_data(GONE_MESSAGE, "debug")
        else:
            self._dir_used = True
            self.publish_data(NOT_STARTED_MESSAGE, "debug")
        self.publish_exit_status(EXCEPTION_STATUS)

    async def refresh(self) -> None:
        """Publish the exit status once the job printed its exit code or its channel closed."""
        channel = self._channel
        if self.exit_status is not None or channel is None:
            return
        if channel.closed or channel.exit_marker is not None:
            self.publish_exit_status(self._final_status(channel))

    async def kill(self) -> None:
        """SIGTERM the job's whole process tree on the host (SIGKILL after a grace period)."""
        conn, channel = self._conn, self._channel
        if conn is None or channel is None or channel.closed:
            self.logger.info("%s: nothing to kill, the connection is closed", self)
            return
        try:
            result = await asyncio.wait_for(
                conn.run(kill_command(self.remote_dir), check=False), COMMAND_TIMEOUT
            )
            self.logger.info(
                "%s: killed the job (exit status %s) %s",
                self,
                result.exit_status,
                str(result.stdout or "").strip(),
            )
        except (asyncssh.Error, OSError) as exc:  # the channel or connection; TimeoutError too
            self.publish_exception("Unexpected error", exc, fatal=False)

    async def close(self) -> None:
        """Remove the job directory (unless kept or already removed) and disconnect.

        Before the job finished (the service is stopping) the job is left running on the
        host, with its directory, for :meth:`reattach` after the restart.
        """
        if self._news_handle is not None:
            self._news_handle.cancel()
            self._news_handle = None
        conn = self._conn
        if conn is None:
            return
        if self.exit_status is None or not self.is_result_stored:
            if self.exit_status is None:
                self.logger.info("%s: detaching from the job, it goes on on the host", self)
            else:
                self.logger.warning(
                    "%s: the result was not stored; the job's directory stays on the host", self
                )
            self._conn = None
            conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), CLOSE_TIMEOUT)
            return
        try:
            channel = self._channel
            if (
                channel is not None
                and channel.ack
                and channel.exit_marker is not None
                and channel.chan is not None
                and not channel.chan.is_closing()
            ):
                # The exit status is stored: the command may remove the directory now.
                channel.chan.write(b"rm\n")
                channel.removes_dir = True
            if channel is not None and not channel.closed:
                # E.g. a failed preflight: the command is removing the directory and exiting.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(channel.closed_event.wait(), CLOSE_TIMEOUT)
            if (
                channel is not None
                and channel.removes_dir
                and channel.closed
                and channel.exit_status is not None
            ):
                self._cleaned = True
            if (
                self.options.cleanup_working_dirs
                and self._dir_used
                and not self._cleaned
                and not self._connection_lost()
            ):
                try:
                    await asyncio.wait_for(
                        conn.run(cleanup_command(self.remote_dir), check=True), COMMAND_TIMEOUT
                    )
                    self._cleaned = True
                except (asyncssh.Error, OSError) as exc:  # ProcessError, lost, TimeoutError
                    self.publish_exception(
                        "Error when removing remote working dir", exc, fatal=False
                    )
        except Exception:
            self.logger.exception("%s: cleanup failed", self)
        finally:
            self._conn = None
            try:
                conn.close()
                await asyncio.wait_for(conn.wait_closed(), CLOSE_TIMEOUT)
            except Exception:
                self.logger.debug("%s: closing the connection failed", self, exc_info=True)

    # -- internals -----------------------------------------------------------

    async def _connect(
        self, slot: StartSlot | None = None, context: str = "Error initializing command"
    ) -> bool:
        try:
            self._conn = await connect(
                self.options,
                self.known_hosts,
                logger=self.logger,
                slot=slot,
                handshakes=self.handshakes,
            )
        except HostUnreachable as exc:
            # An expected failure: one log line, no traceback; the job ends as in the original.
            message = format_exception(context, exc)
            self.logger.error("%s: %s", self, message)
            self.publish_data(message, "debug")
            self.publish_exit_status(EXCEPTION_STATUS)
            return False
        except Exception as exc:  # noqa: BLE001 - the job ends with any other failure (as _start)
            self.publish_exception(context, exc)
            return False
        return True

    def _connection_lost(self) -> bool:
        return self._conn is None or self._conn.is_closed()

    async def _open(
        self, channel: _JobChannel, command: str, *, pty: bool = False
    ) -> asyncssh.SSHClientChannel[bytes]:
        assert self._conn is not None
        self._channel = channel
        kwargs: dict[str, Any] = {"encoding": None, "request_pty": "force" if pty else False}
        if pty:
            kwargs.update(term_type="dumb", term_modes={asyncssh.PTY_ONLCR: 0})
        chan, _ = await self._conn.create_session(lambda: channel, command, **kwargs)
        return chan

    def _launch_command(
        self, marker: str, *, pty: bool, replace: bool = False
    ) -> tuple[str, bool]:
        """The launch command, and whether the script goes on stdin (too big for it)."""
        kwargs: dict[str, Any] = dict(
            directory=self.remote_dir,
            method=self.user_method,
            marker=marker,
            cleanup=self.options.cleanup_working_dirs,
            pty=pty,
            replace=replace,
        )
        if len(self.options.script) <= COMMAND_LIMIT:
            command = launch_command(script=self.options.script, **kwargs)
            if len(command.encode()) <= COMMAND_LIMIT:
                return command, False
        size = len(self.options.script.encode())
        return launch_command(script=None, script_on_stdin=True, script_size=size, **kwargs), True

    async def _launch(self, *, replace: bool = False) -> bool:
        options = self.options
        marker = new_marker()
        script = options.script.encode()
        cleanup = options.cleanup_working_dirs
        command, on_stdin = self._launch_command(marker, pty=False, replace=replace)
        self._log_script()
        channel = _JobChannel(self, marker, ack=cleanup and not on_stdin)
        chan = await self._open(channel, command)
        if on_stdin:
            chan.write(script)
            chan.write_eof()
        await self._started(channel)
        if channel.failure == "exists":
            return False
        self._dir_used = True
        self.publish_started()
        return True

    async def _launch_with_pty(self, *, replace: bool = False) -> bool:
        assert self._conn is not None
        options = self.options
        marker = new_marker()
        script = options.script.encode()
        cleanup = options.cleanup_working_dirs
        setup, on_stdin = self._launch_command(marker, pty=True, replace=replace)
        self._log_script()
        result = await asyncio.wait_for(
            self._conn.run(setup, input=script if on_stdin else None, encoding=None, check=False),
            COMMAND_TIMEOUT,
        )
        raw_stderr = result.stderr or b""
        if not isinstance(raw_stderr, bytes):  # encoding=None: asyncssh hands over bytes
            raise TypeError(f"the setup's stderr is {type(raw_stderr).__name__}, not bytes")
        stderr = raw_stderr.decode("utf-8", errors="replace")
        if f"{marker} exists" in stderr.splitlines():
            return False
        self._dir_used = True
        for line in stderr.splitlines():
            if line.startswith(f"{marker} fail "):
                _, _, stage, code = (line.split(" ") + ["", "", ""])[:4]
                if cleanup:
                    self._cleaned = True
                template = _FAIL_MESSAGES.get(stage, "Preparing the job failed at {stage}")
                raise RuntimeError(template.format(dir=self.remote_dir, code=code, stage=stage))
        if f"{marker} ready" not in stderr:
            detail = "; ".join(line for line in stderr.splitlines()[-5:] if line.strip())
            raise RuntimeError(
                f"Setting up the job on the host failed (exit status {result.exit_status})"
                + (f": {detail}" if detail else "")
            )
        password = options.effective_user_password
        channel = _JobChannel(
            self,
            marker,
            pty=True,
            responder=PasswordResponder(self.user_method, password, on_repeat=b"\x04"),
            secret=password,
            ack=cleanup,
        )
        await self._open(
            channel,
            pty_run_command(
                directory=self.remote_dir, method=self.user_method, marker=marker, cleanup=cleanup
            ),
            pty=True,
        )
        await self._started(channel)
        self.publish_started()
        return True

    async def _started(self, channel: _JobChannel) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(channel.started), SETUP_TIMEOUT)
        except TimeoutError:
            if channel.chan is not None:
                channel.chan.close()
            raise RuntimeError(
                f"The job was not set up on the host within {SETUP_TIMEOUT:g} seconds "
                "(an unexpected prompt?)"
            ) from None

    def _log_script(self) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            indented = "\n".join(f"  | {line}" for line in self.options.script.splitlines())
            self.logger.debug(
                "%s: copying script to %s/script:\n%s", self, self.remote_dir, indented
            )

    def _final_status(self, channel: _JobChannel) -> int | str:
        if channel.failure is not None:
            return EXCEPTION_STATUS
        if channel.exit_marker is not None:
            try:
                return int(channel.exit_marker)
            except ValueError:
                return 1
        if channel.exit_status is not None:
            return channel.exit_status
        if channel.exit_signal is not None:
            signum = getattr(signal, f"SIG{channel.exit_signal}", None)
            return 128 + int(signum) if signum is not None else 255
        if self._power_action:
            self.publish_data(
                "The connection was lost after a power action; counting it as a success", "debug"
            )
            return 0
        reason = f": {channel.lost}" if channel.lost else ""
        self.publish_data(f"The connection to the host was lost{reason}", "debug")
        return 255

    # -- called by the channel -----------------------------------------------

    def stdout_received(self, text: str) -> None:
        """The job's channel decoded ``text`` of the job's output (on its PTY: both streams)."""
        if not self._power_action and text.lstrip().startswith(EXPECTED_POWER_ACTION_MESSAGES):
            self._power_action = True
        self._append("stdout", text)

    def stderr_received(self, text: str) -> None:
        """The job's channel received a line of the job's stderr (no PTY)."""
        self._append("stderr", text)

    def _append(self, output_type: str, text: str) -> None:
        records = self._output.raw_outputs
        if records and records[-1]["output_type"] == output_type and "id" not in records[-1]:
            records[-1]["output"] += text
        else:
            self.publish_data(text, output_type)
        self._schedule_news()

    def exit_seen(self, channel: _JobChannel) -> None:
        """The job printed its exit code: report it now (the channel stays open until the
        proxy stored it and acknowledges, see :meth:`close`)."""
        self.channel_closed(channel)

    def channel_closed(self, channel: _JobChannel) -> None:
        """``channel`` closed: if it is the job's, report at once (no news interval)."""
        if channel is not self._channel:
            return
        if self._news_handle is not None:
            self._news_handle.cancel()
            self._news_handle = None
        self._fire_news()

    def _schedule_news(self) -> None:
        if self._news_handle is not None:
            return
        loop = asyncio.get_running_loop()
        delay = self._last_news + NEWS_INTERVAL - loop.time()
        if delay <= 0:
            self._fire_news()
        else:
            self._news_handle = loop.call_later(delay, self._fire_news)

    def _fire_news(self) -> None:
        self._news_handle = None
        with contextlib.suppress(RuntimeError):
            self._last_news = asyncio.get_running_loop().time()
        self.news()
