"""ScriptRunner against a real OpenSSH server (the "host" is this machine).

The runner is driven directly (start/refresh/kill/close and generate_updates), or through the
Dispatcher with a recording deliver callback where the delivery timing matters.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import asyncssh
import psutil
import pytest

from smart_proxy_dynflow.dispatcher import Dispatcher
from smart_proxy_dynflow.runner import TIMEOUT_MESSAGE, SuspendedAction, Update
from smart_proxy_remote_execution_ssh import connection as rex_connection
from smart_proxy_remote_execution_ssh.known_hosts import KnownHosts
from smart_proxy_remote_execution_ssh.options import ScriptOptions
from smart_proxy_remote_execution_ssh.script_runner import GONE_MESSAGE, ScriptRunner
from smart_proxy_remote_execution_ssh.wrapper import COMMAND_LIMIT
from tests.support import sshd as sshd_support
from tests.support.sshd import Sshd, SshKeys, TestUsers

TIMEOUT = 30
SRC = Path(__file__).resolve().parents[2] / "src"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    updates: list[tuple[float, Update]] = field(default_factory=list)

    @property
    def records(self) -> list[dict[str, Any]]:
        return [record for _, update in self.updates for record in update.output]

    def text(self, output_type: str = "stdout") -> str:
        return "".join(r["output"] for r in self.records if r["output_type"] == output_type)

    @property
    def debug(self) -> str:
        return "\n".join(r["output"] for r in self.records if r["output_type"] == "debug")

    @property
    def exit_status(self) -> Any:
        statuses = [u.exit_status for _, u in self.updates if u.exit_status is not None]
        assert len(statuses) == 1, statuses
        return statuses[0]

    @property
    def exit_time(self) -> float:
        return next(t for t, u in self.updates if u.exit_status is not None)

    def everything(self) -> str:
        return json.dumps([u.to_event() for _, u in self.updates])


async def drive(
    runner: ScriptRunner,
    *,
    resume: bool = False,
    during: Callable[[Result], Awaitable[bool]] | None = None,
    timeout: float = TIMEOUT,
    stored: bool = True,
) -> Result:
    """start (or reattach), refresh until the exit status, close. ``during`` runs after every
    poll until it returns True. ``stored``: the result is stored, as the dispatcher says once
    the engine saved it (False: the proxy died before)."""
    result = Result()
    deadline = time.monotonic() + timeout
    if resume:
        await runner.reattach()
    else:
        await runner.start()
    try:
        while True:
            await runner.refresh()
            for update in runner.generate_updates().values():
                result.updates.append((time.monotonic(), update))
            if any(u.exit_status is not None for _, u in result.updates):
                if stored:
                    runner.result_stored()
                return result
            if during is not None and await during(result):
                during = None
            assert time.monotonic() < deadline, f"no exit status in time: {result.records}"
            await asyncio.sleep(0.02)
    finally:
        await asyncio.wait_for(runner.close(), TIMEOUT)


@dataclass
class Rex:
    """Builds runners for the test server."""

    sshd: Sshd
    users: TestUsers
    keys: SshKeys
    known_hosts_path: Path
    work_dir: Path
    store: KnownHosts

    def options(self, script: str, settings: dict[str, Any] | None = None, **input: Any):
        values: dict[str, Any] = {
            "hostname": self.sshd.host,
            "ssh_port": self.sshd.port,
            "ssh_user": self.users.rexuser.name,
            "remote_working_dir": str(self.work_dir),
            "script": script,
        }
        values.update(input)
        merged = {
            "ssh_identity_key_file": str(self.keys.proxy.private),
            "known_hosts_file": str(self.known_hosts_path),
            **(settings or {}),
        }
        return ScriptOptions.from_input(values, merged)

    def runner(
        self, script: str, *, store: KnownHosts | None = None, id: str | None = None, **kw: Any
    ) -> ScriptRunner:
        settings = kw.pop("settings", None)
        published = kw.pop("published_chars", 0)
        started = kw.pop("started", False)
        return ScriptRunner(
            self.options(script, settings, **kw),
            known_hosts=store or self.store,
            id=id,
            published_chars=published,
            started=started,
        )

    def job_dirs(self) -> list[Path]:
        return sorted(self.work_dir.glob("foreman-ssh-cmd-*"))


@pytest.fixture
def rex(
    sshd: Sshd,
    ssh_users: TestUsers,
    ssh_keys: SshKeys,
    known_hosts: Path,
    remote_working_dir: Path,
) -> Rex:
    rex_connection.clear_identity_cache()
    return Rex(sshd, ssh_users, ssh_keys, known_hosts, remote_working_dir, KnownHosts(known_hosts))


def user_processes(username: str, needle: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["username", "cmdline"]):
        if proc.info["username"] == username and needle in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


async def wait_until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


# -- running scripts -------------------------------------------------------------------------


async def test_success_with_output(rex: Rex) -> None:
    result = await drive(rex.runner("#!/bin/sh\necho hello\nid -un\n"))
    assert result.exit_status == 0
    assert result.text() == f"hello\n{rex.users.rexuser.name}\n"
    assert result.updates[-1][1].exit_status_timestamp is not None
    assert rex.job_dirs() == []  # cleaned up
    # The host key was learned (accept-new).
    assert rex.sshd.known_hosts_lines()[0] in rex.known_hosts_path.read_text()


async def test_non_zero_exit_and_stderr_merged(rex: Rex) -> None:
    result = await drive(rex.runner("echo out\necho err >&2\nexit 3"))
    assert result.exit_status == 3
    assert result.text() == "out\nerr\n"
    assert result.text("stderr") == ""


async def test_script_without_shebang_and_carriage_returns(rex: Rex) -> None:
    result = await drive(rex.runner("echo 'it'\"'\"'s'\r\nprintf 'no newline'\r\n"))
    assert (result.exit_status, result.text()) == (0, "it's\nno newline")


async def test_output_is_streamed_while_the_script_runs(rex: Rex) -> None:
    """Through the dispatcher: with a long refresh interval only news() delivers early."""
    updates: list[tuple[float, Update]] = []
    done = asyncio.Event()

    async def deliver(action: SuspendedAction, update: Update) -> None:
        updates.append((time.monotonic(), update))
        if update.exit_status is not None:
            done.set()

    dispatcher = Dispatcher(deliver, refresh_interval=60)
    runner = rex.runner("echo first\nsleep 2\necho second\n")
    started = time.monotonic()
    dispatcher.start(SuspendedAction("plan", 1), runner)
    await asyncio.wait_for(done.wait(), TIMEOUT)
    await wait_until(lambda: runner._conn is None)
    await dispatcher.stop()
    first = next(t for t, u in updates if any("first" in r["output"] for r in u.output))
    finished = next(t for t, u in updates if u.exit_status is not None)
    assert first - started < 1.5, "the first line was not delivered while the script ran"
    assert finished - first > 1.5
    assert finished - started < 5, "the exit was not delivered promptly"
    text = "".join(r["output"] for _, u in updates for r in u.output)
    assert text == "first\nsecond\n"


async def test_big_script_goes_over_stdin(rex: Rex) -> None:
    padding = "#" * 100 + "\n"
    script = "echo big\n" + padding * (COMMAND_LIMIT // len(padding) + 10) + "exit 4\n"
    result = await drive(rex.runner(script))
    assert (result.exit_status, result.text()) == (4, "big\n")
    assert rex.job_dirs() == []


async def test_script_that_grows_when_quoted_goes_over_stdin(rex: Rex) -> None:
    """A script within the limit whose shell quoting (' -> '"'"') would exceed it."""
    script = "echo quoted\n" + "# " + "'" * (COMMAND_LIMIT // 3) + "\nexit 0\n"
    assert len(script) < COMMAND_LIMIT
    result = await drive(rex.runner(script))
    assert (result.exit_status, result.text()) == (0, "quoted\n")


async def test_big_script_with_sudo_password(rex: Rex) -> None:
    user, target = rex.users.rexuser, rex.users.rextarget
    script = "id -un\n" + "#" * (COMMAND_LIMIT + 10) + "\n"
    runner = rex.runner(
        script, effective_user=target.name, secrets={"effective_user_password": user.password}
    )
    result = await drive(runner)
    assert (result.exit_status, result.text()) == (0, f"{target.name}\n")


async def test_keeps_the_working_dir_when_asked(rex: Rex) -> None:
    runner = rex.runner("echo kept\nexit 2", cleanup_working_dirs=False)
    result = await drive(runner)
    assert result.exit_status == 2
    (directory,) = rex.job_dirs()
    assert directory.name == f"foreman-ssh-cmd-{runner.id}"
    assert (directory / "output").read_text() == "kept\n"
    assert (directory / "exit_code").read_text() == "2\n"
    assert (directory / "script").stat().st_mode & 0o777 == 0o500
    assert (directory / "script-wrapper").stat().st_mode & 0o777 == 0o500
    assert (directory / "output").stat().st_mode & 0o777 == 0o600
    assert directory.stat().st_uid == rex.users.rexuser.uid


async def test_non_utf8_output_is_replaced(rex: Rex) -> None:
    result = await drive(rex.runner("printf 'caf\\303\\251 \\377\\n'"))
    assert result.text() == "café \ufffd\n"


# -- kill, timeout ---------------------------------------------------------------------------


async def test_kill_stops_the_whole_tree(rex: Rex) -> None:
    user = rex.users.rexuser.name
    script = "sleep 1001 &\nsh -c 'sleep 1002' &\necho running\nsleep 1003\n"
    runner = rex.runner(script)

    async def kill_when_running(result: Result) -> bool:
        if "running" not in result.text():
            return False
        await wait_until(lambda: len(user_processes(user, "sleep 100")) >= 3)
        await runner.kill()
        return True

    result = await drive(runner, during=kill_when_running)
    assert result.exit_status == 143
    await wait_until(lambda: not user_processes(user, "sleep 100"), timeout=5)
    assert rex.job_dirs() == []  # removed by close()


async def test_kill_right_after_the_start(rex: Rex) -> None:
    user = rex.users.rexuser.name
    runner = rex.runner("sleep 1008\n")

    async def kill_at_once(result: Result) -> bool:
        await runner.kill()
        return True

    result = await drive(runner, during=kill_at_once)
    assert result.exit_status == 143
    await wait_until(lambda: not user_processes(user, "sleep 1008"), timeout=5)


async def test_kill_after_the_end_is_harmless(rex: Rex) -> None:
    runner = rex.runner("echo done")
    result = await drive(runner)
    assert result.exit_status == 0
    await runner.kill()  # the connection is closed: nothing to do
    assert runner.generate_updates() == {}


async def test_timeout_publishes_the_debug_line_and_kills(rex: Rex) -> None:
    user = rex.users.rexuser.name
    runner = rex.runner("echo waiting\nsleep 1004\n", execution_timeout_interval=1)
    assert runner.timeout_interval() == 1

    async def time_out(result: Result) -> bool:
        if "waiting" not in result.text():
            return False
        await runner.timeout()
        return True

    result = await drive(runner, during=time_out)
    assert TIMEOUT_MESSAGE in result.debug
    assert result.exit_status == 143
    await wait_until(lambda: not user_processes(user, "sleep 1004"), timeout=5)


async def test_timeout_through_the_dispatcher(rex: Rex) -> None:
    updates: list[Update] = []
    done = asyncio.Event()

    async def deliver(action: SuspendedAction, update: Update) -> None:
        updates.append(update)
        if update.exit_status is not None:
            done.set()

    dispatcher = Dispatcher(deliver, refresh_interval=0.5)
    runner = rex.runner("sleep 1005\n", execution_timeout_interval=1)
    dispatcher.start(SuspendedAction("plan", 1), runner)
    await asyncio.wait_for(done.wait(), TIMEOUT)
    await dispatcher.stop()
    assert updates[-1].exit_status == 143
    assert TIMEOUT_MESSAGE in [r["output"] for u in updates for r in u.output]


# -- connection problems ---------------------------------------------------------------------


FOREMAN_CONNECTION_OPTIONS = {
    "retry_interval": 15,
    "retry_count": 4,
    "proxy_batch_triggering": True,
}
"""What foreman-tasks' ProxyAction puts in every job: its own trigger retries, not ours."""


async def test_unreachable_host_fails_at_once_with_exception(rex: Rex, closed_port: int) -> None:
    """As the original: one attempt, exit status "EXCEPTION", "Error initializing command:
    <Class> - <message>" (it used to be 4 attempts 15 s apart, per connection_options, and 255)."""
    runner = rex.runner("true", ssh_port=closed_port, connection_options=FOREMAN_CONNECTION_OPTIONS)
    started = time.monotonic()
    result = await drive(runner)
    elapsed = time.monotonic() - started
    assert result.exit_status == "EXCEPTION"
    (record,) = result.records
    assert record["output_type"] == "debug"
    assert record["output"].startswith(
        "Error initializing command: HostUnreachable - Could not establish connection to remote "
        f"host 127.0.0.1:{closed_port} as {rex.users.rexuser.name}: Connection refused"
    )
    assert "attempts" not in record["output"]
    assert elapsed < 3


async def test_a_silent_host_costs_one_connect_timeout(rex: Rex) -> None:
    with sshd_support.blackhole_port() as port:
        runner = rex.runner(
            "true",
            ssh_port=port,
            connection_options={**FOREMAN_CONNECTION_OPTIONS, "timeout": 60},
            settings={"connect_timeout": 0.5},
        )
        started = time.monotonic()
        result = await drive(runner)
    assert result.exit_status == "EXCEPTION"
    assert "connection timed out" in result.debug
    assert 0.5 <= time.monotonic() - started < 2.5


async def test_connect_retries_setting(rex: Rex, closed_port: int) -> None:
    runner = rex.runner(
        "true",
        ssh_port=closed_port,
        connection_options=FOREMAN_CONNECTION_OPTIONS,
        settings={"connect_retries": 2, "connect_retry_interval": 0.3},
    )
    started = time.monotonic()
    result = await drive(runner)
    elapsed = time.monotonic() - started
    assert result.exit_status == "EXCEPTION"
    assert "(3 attempts)" in result.debug and "refused" in result.debug.lower()
    assert 0.6 <= elapsed < 5


async def test_connect_timeout_per_attempt(rex: Rex) -> None:
    with sshd_support.blackhole_port() as port:
        runner = rex.runner(
            "true",
            ssh_port=port,
            settings={"connect_retries": 1, "connect_retry_interval": 0.1, "connect_timeout": 0.5},
        )
        started = time.monotonic()
        result = await drive(runner)
    assert result.exit_status == "EXCEPTION"
    assert "timed out" in result.debug and "(2 attempts)" in result.debug
    assert 1.0 <= time.monotonic() - started < 4


async def test_wrong_password_and_unknown_key(rex: Rex) -> None:
    runner = rex.runner(
        "true",
        secrets={"ssh_password": "wrong-password"},
        settings={"ssh_identity_key_file": str(rex.keys.stranger.private)},
    )
    result = await drive(runner)
    assert result.exit_status == "EXCEPTION"
    assert (
        "Could not establish connection to remote host using any available authentication "
        "method, tried password, publickey" in result.debug
    )
    assert "Authentication method 'password' failed with" in result.debug
    assert "wrong-password" not in result.everything()


async def test_password_login(rex: Rex, tmp_path: Path) -> None:
    runner = rex.runner(
        "id -un",
        secrets={"ssh_password": rex.users.rexuser.password},
        settings={"ssh_identity_key_file": str(tmp_path / "no-such-key")},
    )
    result = await drive(runner)
    assert (result.exit_status, result.text()) == (0, f"{rex.users.rexuser.name}\n")


async def test_no_authentication_methods(rex: Rex) -> None:
    runner = rex.runner(
        "true", settings={"ssh_identity_key_file": str(rex.keys.proxy_encrypted.private)}
    )
    result = await drive(runner)
    assert result.exit_status == "EXCEPTION"
    assert "There are no available authentication methods" in result.debug


async def test_encrypted_key_with_its_passphrase(rex: Rex) -> None:
    key = rex.keys.proxy_encrypted
    runner = rex.runner(
        "echo ok",
        secrets={"key_passphrase": key.passphrase},
        settings={"ssh_identity_key_file": str(key.private)},
    )
    result = await drive(runner)
    assert (result.exit_status, result.text()) == (0, "ok\n")
    assert key.passphrase not in result.everything()


async def test_user_certificate_login(rex: Rex) -> None:
    """No authorized key at all: only the proxy key's -cert.pub (signed by the user CA) works."""
    rex.sshd.set_authorized_keys(rex.users.rexuser.name, [])
    assert rex.keys.proxy.has_certificate
    result = await drive(rex.runner("echo cert"))
    assert (result.exit_status, result.text()) == (0, "cert\n")
    # The RSA key has no certificate and is no longer authorized.
    result = await drive(
        rex.runner("true", settings={"ssh_identity_key_file": str(rex.keys.rsa.private)})
    )
    assert result.exit_status == "EXCEPTION"
    assert "the server rejected the key" in result.debug


# -- host keys -------------------------------------------------------------------------------


async def test_changed_host_key_is_rejected_until_first_execution(rex: Rex) -> None:
    assert (await drive(rex.runner("true"))).exit_status == 0
    old = rex.sshd.known_hosts_lines()[0]
    rex.sshd.restart(new_host_key=True)

    result = await drive(rex.runner("true"))
    assert result.exit_status == "EXCEPTION"
    host = sshd_support.known_hosts_host(rex.sshd.host, rex.sshd.port)
    assert f"Host key verification failed for {host}" in result.debug
    assert old in rex.known_hosts_path.read_text()  # nothing learned

    # A fresh store (e.g. after a restart of the proxy) reads the file and rejects it too.
    fresh = KnownHosts(rex.known_hosts_path)
    assert (await drive(rex.runner("true", store=fresh))).exit_status == "EXCEPTION"

    result = await drive(rex.runner("echo again", first_execution=True))
    assert (result.exit_status, result.text()) == (0, "again\n")
    text = rex.known_hosts_path.read_text()
    assert old not in text and rex.sshd.known_hosts_lines()[0] in text
    assert (await drive(rex.runner("true", store=fresh))).exit_status == 0


async def test_ca_known_hosts_is_strict(rex: Rex, tmp_path: Path) -> None:
    ca_file = tmp_path / "ca_known_hosts"
    ca_file.write_text(rex.keys.host_ca_known_hosts_line() + "\n")
    store = KnownHosts(rex.known_hosts_path, ca_file=str(ca_file))
    settings = {"ssh_ca_known_hosts_file": str(ca_file)}
    result = await drive(rex.runner("echo trusted", store=store, settings=settings))
    assert (result.exit_status, result.text()) == (0, "trusted\n")
    assert rex.known_hosts_path.read_text() == ""  # nothing learned in strict mode

    rex.sshd.stop()
    rex.sshd.rotate_host_key(certificate=False)  # a bare key the CA does not vouch for
    rex.sshd.start()
    result = await drive(rex.runner("true", store=store, settings=settings))
    assert result.exit_status == "EXCEPTION"
    assert "Host key verification failed" in result.debug


async def test_host_public_key_pins_the_host_key(rex: Rex) -> None:
    line = rex.sshd.known_hosts_lines()[0]
    _, algorithm, blob = line.split()[:3]
    before = rex.known_hosts_path.read_text()
    result = await drive(rex.runner("echo pinned", host_public_key=f"{algorithm} {blob}"))
    assert (result.exit_status, result.text()) == (0, "pinned\n")
    assert rex.known_hosts_path.read_text() == before  # a pinned key is not learned

    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    result = await drive(rex.runner("true", host_public_key=other))
    assert result.exit_status == "EXCEPTION"
    assert "Host key verification failed" in result.debug
    assert "the job pins the host key ssh-ed25519" in result.debug


# -- preflight and effective users -----------------------------------------------------------


async def test_noexec_working_dir(rex: Rex, noexec_dir: Path) -> None:
    result = await drive(rex.runner("echo never", remote_working_dir=str(noexec_dir)))
    assert result.exit_status == "EXCEPTION"
    assert "Failed to execute script on remote machine, exit code: 126." in result.debug
    assert "never" not in result.text()
    assert list(noexec_dir.iterdir()) == []  # cleaned up


async def test_sudo_with_password(rex: Rex) -> None:
    user, target = rex.users.rexuser, rex.users.rextarget
    runner = rex.runner(
        'id -un\necho "pw is $SUDO_USER"\n',
        effective_user=target.name,
        secrets={"effective_user_password": user.password},
        cleanup_working_dirs=False,
    )
    assert runner.uses_pty
    result = await drive(runner)
    assert result.exit_status == 0, result.records
    assert result.text() == f"{target.name}\npw is {user.name}\n"
    assert user.password not in result.everything()
    # What was published is what the host recorded (re-attaching skips by that count).
    (directory,) = rex.job_dirs()
    assert (directory / "output").read_text() == result.text()
    assert (directory / "exit_code").read_text() == "0\n"


async def test_sudo_password_typed_into_the_output_is_masked(rex: Rex) -> None:
    user, target = rex.users.rexuser, rex.users.rextarget
    runner = rex.runner(
        f"echo 'leak: {user.password}'\n",
        effective_user=target.name,
        secrets={"effective_user_password": user.password},
    )
    result = await drive(runner)
    assert result.exit_status == 0
    assert result.text() == "leak: *****\n"
    assert user.password not in result.everything()


async def test_bad_sudo_password(rex: Rex) -> None:
    user, target = rex.users.rexuser, rex.users.rextarget
    runner = rex.runner(
        "echo never",
        effective_user=target.name,
        secrets={"effective_user_password": "not-" + user.password},
    )
    result = await drive(runner)
    assert result.exit_status == "EXCEPTION"
    assert "Failed to change to effective user, exit code: 1" in result.debug
    assert "never" not in result.everything()
    assert user.password not in result.everything()
    assert rex.job_dirs() == []


async def test_sudo_without_password_fails_the_preflight(rex: Rex) -> None:
    runner = rex.runner("echo never", effective_user=rex.users.rextarget.name)
    assert runner.uses_pty  # a user switch always runs on a terminal
    result = await drive(runner)
    assert result.exit_status == "EXCEPTION"
    assert "Failed to change to effective user, exit code: 1" in result.debug


@pytest.fixture
def requiretty_nopasswd(rex: Rex) -> Iterator[None]:
    """The host's sudoers say ``Defaults requiretty`` for the SSH user, with a NOPASSWD rule
    to the target (a drop-in read after the users' own, removed afterwards)."""
    user, target = rex.users.rexuser, rex.users.rextarget
    path = rex.users.sudoers_file.with_name(rex.users.sudoers_file.name + "-tty")
    candidate = path.with_name("." + path.name + ".new")  # dotted: ignored by sudo
    candidate.write_text(
        f"Defaults:{user.name} requiretty\n{user.name} ALL=({target.name}) NOPASSWD: ALL\n"
    )
    candidate.chmod(0o440)
    subprocess.run(["visudo", "-cf", str(candidate)], check=True, capture_output=True)
    candidate.replace(path)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


async def test_nopasswd_sudo_on_a_host_that_requires_a_tty(rex: Rex, requiretty_nopasswd) -> None:
    """The original runs the user switch on a terminal (``ssh -tt``): NOPASSWD sudo works on a
    host with ``Defaults requiretty`` (before, only a switch with a password got a terminal and
    this failed with "Failed to change to effective user")."""
    target = rex.users.rextarget
    runner = rex.runner("id -un\n", effective_user=target.name, cleanup_working_dirs=False)
    result = await drive(runner)
    assert result.exit_status == 0, result.everything()
    assert result.text() == f"{target.name}\n"
    (directory,) = rex.job_dirs()
    assert (directory / "exit_code").read_text() == "0\n"


async def test_sudo_without_rule(rex: Rex) -> None:
    user = rex.users.rexnosudo
    runner = rex.runner(
        "echo never",
        ssh_user=user.name,
        effective_user=rex.users.rextarget.name,
        secrets={"effective_user_password": user.password},
        remote_working_dir="/var/tmp",
    )
    result = await drive(runner)
    assert result.exit_status == "EXCEPTION"
    assert "Failed to change to effective user, exit code: 1" in result.debug
    assert not Path(runner.remote_dir).exists()


async def test_su_with_password(rex: Rex) -> None:
    target = rex.users.rextarget
    runner = rex.runner(
        "id -un\npwd\nexit 6\n",
        effective_user=target.name,
        effective_user_method="su",
        secrets={"effective_user_password": target.password},
    )
    result = await drive(runner)
    assert result.exit_status == 6, result.records
    assert result.text() == f"{target.name}\n{target.home}\n"
    assert target.password not in result.everything()


async def test_bad_su_password(rex: Rex) -> None:
    runner = rex.runner(
        "echo never",
        effective_user=rex.users.rextarget.name,
        effective_user_method="su",
        secrets={"effective_user_password": "wrong"},
    )
    result = await drive(runner)
    assert result.exit_status == "EXCEPTION"
    assert "Failed to change to effective user, exit code: 1" in result.debug


# -- lost connections and power actions ------------------------------------------------------


async def test_lost_connection_is_255(rex: Rex) -> None:
    async def drop(result: Result) -> bool:
        if "up" not in result.text():
            return False
        rex.sshd.kill_sessions()
        return True

    result = await drive(rex.runner("echo up\nsleep 1006\n"), during=drop)
    assert result.exit_status == 255
    assert "connection to the host was lost" in result.debug


async def test_lost_connection_after_a_power_action_is_success(rex: Rex) -> None:
    async def reboot(result: Result) -> bool:
        if "restart host" not in result.text():
            return False
        rex.sshd.kill_sessions()
        return True

    result = await drive(rex.runner("echo 'restart host'\nsleep 1007\n"), during=reboot)
    assert result.exit_status == 0
    assert "power action" in result.debug


# -- re-attaching after a restart of the proxy -----------------------------------------------

CHILD = """
import asyncio, json, sys
sys.path[:0] = {paths!r}
from smart_proxy_remote_execution_ssh.known_hosts import KnownHosts
from smart_proxy_remote_execution_ssh.options import ScriptOptions
from smart_proxy_remote_execution_ssh.script_runner import ScriptRunner

async def main():
    spec = json.loads(sys.argv[1])
    options = ScriptOptions.from_input(spec["input"], spec["settings"])
    runner = ScriptRunner(options, known_hosts=KnownHosts(spec["settings"]["known_hosts_file"]),
                          id=spec["id"])
    await runner.start()
    seen = ""
    while spec["wait_for"] not in seen:
        await runner.refresh()
        for update in runner.generate_updates().values():
            seen += "".join(r["output"] for r in update.output)
            assert update.exit_status is None, update
        await asyncio.sleep(0.02)
    print("READY", json.dumps(seen), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def start_in_a_doomed_process(rex: Rex, runner: ScriptRunner, wait_for: str) -> str:
    """Start ``runner``'s job in another process, then kill -9 that process (a proxy crash)."""
    options = runner.options
    spec = {
        "id": runner.id,
        "wait_for": wait_for,
        "input": {
            "hostname": options.hostname,
            "ssh_port": options.ssh_port,
            "ssh_user": options.ssh_user,
            "script": options.script,
            "remote_working_dir": options.remote_working_dir,
            "cleanup_working_dirs": options.cleanup_working_dirs,
        },
        "settings": {
            "ssh_identity_key_file": options.ssh_identity_key_file,
            "known_hosts_file": options.known_hosts_file,
        },
    }
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD.format(paths=[str(SRC), str(ROOT)]),
        json.dumps(spec),
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    line = (await asyncio.wait_for(child.stdout.readline(), TIMEOUT)).decode()
    try:
        assert line.startswith("READY "), line
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    return json.loads(line[len("READY ") :])


async def test_reattach_to_a_running_script(rex: Rex) -> None:
    script = "echo one\nsleep 2\necho two\nexit 5\n"
    first = rex.runner(script)
    seen = await start_in_a_doomed_process(rex, first, "one\n")
    assert seen == "one\n"
    (directory,) = rex.job_dirs()
    assert not (directory / "exit_code").exists()  # still running

    again = rex.runner(script, id=first.id, published_chars=len(seen))
    result = await drive(again, resume=True)
    assert result.exit_status == 5
    assert result.text() == "two\n"
    assert rex.job_dirs() == []


async def test_reattach_to_a_finished_script(rex: Rex) -> None:
    script = "echo one\nsleep 1\necho two\nexit 7\n"
    first = rex.runner(script)
    seen = await start_in_a_doomed_process(rex, first, "one\n")
    (directory,) = rex.job_dirs()
    await wait_until(lambda: (directory / "exit_code").exists(), timeout=10)
    assert (directory / "output").read_text() == "one\ntwo\n"

    again = rex.runner(script, id=first.id, published_chars=len(seen))
    result = await drive(again, resume=True)
    assert (result.exit_status, result.text()) == (7, "two\n")
    assert rex.job_dirs() == []


async def test_service_stop_detaches_and_a_restart_reattaches(rex: Rex) -> None:
    """A graceful stop (Dispatcher.stop closes the runners) leaves the job running."""
    updates: list[Update] = []

    async def deliver(action: SuspendedAction, update: Update) -> None:
        updates.append(update)

    script = "echo one\nsleep 2\necho two\nexit 3\n"
    dispatcher = Dispatcher(deliver, refresh_interval=0.2)
    first = rex.runner(script)
    dispatcher.start(SuspendedAction("plan", 1), first)
    await wait_until(lambda: "one" in "".join(r["output"] for u in updates for r in u.output))
    await dispatcher.stop()
    assert all(u.exit_status is None for u in updates)
    (directory,) = rex.job_dirs()
    assert not (directory / "exit_code").exists()

    published = sum(len(r["output"]) for u in updates for r in u.output)
    again = rex.runner(script, id=first.id, published_chars=published)
    result = await drive(again, resume=True)
    assert (result.exit_status, result.text()) == (3, "two\n")
    assert rex.job_dirs() == []


async def test_reattach_without_anything_published(rex: Rex) -> None:
    runner = rex.runner("echo a\necho b\n", cleanup_working_dirs=False)
    assert (await drive(runner)).exit_status == 0
    again = rex.runner("", id=runner.id, cleanup_working_dirs=False)
    result = await drive(again, resume=True)
    assert (result.exit_status, result.text()) == (0, "a\nb\n")
    assert len(rex.job_dirs()) == 1


async def test_reattach_when_the_directory_is_gone(rex: Rex) -> None:
    """The proxy had stored that the job started: its result is unknown (never run again)."""
    runner = rex.runner("true", started=True)
    result = await drive(runner, resume=True)
    assert result.exit_status == "EXCEPTION"
    assert GONE_MESSAGE in result.debug


async def test_reattach_to_a_job_that_never_reached_the_host_starts_it(
    rex: Rex, tmp_path: Path
) -> None:
    """The proxy crashed before the launch reached the host (nothing stored says it started):
    the re-attach starts the job, once."""
    runs = rex.work_dir / f"runs-{uuid.uuid4().hex}"
    runner = rex.runner(f"echo ran >> {runs}\necho out\nexit 4\n")
    result = await drive(runner, resume=True)
    assert (result.exit_status, result.text()) == (4, "out\n")
    assert runs.read_text() == "ran\n"
    assert rex.job_dirs() == []
    runs.unlink()


async def test_reattach_to_a_launch_that_never_ran_the_wrapper_starts_it(rex: Rex) -> None:
    runs = rex.work_dir / f"runs-{uuid.uuid4().hex}"
    runner = rex.runner(f"echo ran >> {runs}\n")
    directory = Path(runner.remote_dir)
    directory.mkdir()
    (directory / "output").write_text("")
    shutil.chown(directory, rex.users.rexuser.name)
    result = await drive(runner, resume=True)
    assert result.exit_status == 0
    assert runs.read_text() == "ran\n"
    runs.unlink()


async def test_a_second_start_of_the_same_job_reattaches(rex: Rex) -> None:
    """A step re-run after a crash before its first save starts a runner with the same id:
    it finds the job the first run launched and follows it; the script runs once."""
    runs = rex.work_dir / f"runs-{uuid.uuid4().hex}"
    script = f"echo ran >> {runs}\necho one\nsleep 1\necho two\nexit 6\n"
    first = rex.runner(script)
    await start_in_a_doomed_process(rex, first, "one\n")
    again = rex.runner(script, id=first.id)
    result = await drive(again)
    assert (result.exit_status, result.text()) == (6, "one\ntwo\n")
    assert runs.read_text() == "ran\n"
    assert rex.job_dirs() == []
    runs.unlink()


async def test_the_directory_stays_until_the_result_is_stored(rex: Rex) -> None:
    """The exit code was seen but the proxy could not store it (it died, the database was
    down): nothing on the host is removed, and a later re-attach reports the real result."""
    runner = rex.runner("echo done\nexit 3\n")
    result = await drive(runner, stored=False)
    assert result.exit_status == 3
    (directory,) = rex.job_dirs()
    assert (directory / "exit_code").read_text() == "3\n"
    again = rex.runner("", id=runner.id, started=True)
    result = await drive(again, resume=True)
    assert (result.exit_status, result.text()) == (3, "done\n")
    assert rex.job_dirs() == []


async def test_many_jobs_at_once(rex: Rex) -> None:
    """A small load test: one store, one identity, many connections to one server."""
    runners = [rex.runner(f"echo job{i}") for i in range(40)]
    started = time.monotonic()
    results = await asyncio.gather(*(drive(r) for r in runners))
    elapsed = time.monotonic() - started
    assert [r.exit_status for r in results] == [0] * 40
    assert [r.text() for r in results] == [f"job{i}\n" for i in range(40)]
    assert rex.job_dirs() == []
    assert elapsed < 20
    assert rex.known_hosts_path.read_text().count("\n") == 1


def test_runner_is_recoverable() -> None:
    assert ScriptRunner.recoverable
    assert os.path.basename(__file__) == "test_script_runner.py"


# -- the identity key cache ------------------------------------------------------------------


async def test_identity_is_loaded_once_per_file_version(ssh_keys: SshKeys, tmp_path: Path) -> None:
    rex_connection.clear_identity_cache()
    key = tmp_path / "id"
    key.write_bytes(ssh_keys.proxy.private.read_bytes())
    key.chmod(0o600)
    first, second = await asyncio.gather(
        rex_connection.load_identity(str(key)), rex_connection.load_identity(str(key))
    )
    assert first is second
    assert first.certificate is None
    assert await rex_connection.load_identity(str(key)) is first
    key.write_bytes(ssh_keys.rsa.private.read_bytes())
    os.utime(key, ns=(1, 1))
    reloaded = await rex_connection.load_identity(str(key))
    assert reloaded is not first and reloaded.key.get_algorithm() == "ssh-rsa"
    # The certificate next to the key is picked up.
    with_cert = await rex_connection.load_identity(str(ssh_keys.proxy.private))
    assert with_cert.certificate is not None


async def test_encrypted_identity_needs_the_passphrase(ssh_keys: SshKeys) -> None:
    rex_connection.clear_identity_cache()
    path = str(ssh_keys.proxy_encrypted.private)
    with pytest.raises(rex_connection.KeyEncrypted):
        await rex_connection.load_identity(path)
    with pytest.raises(asyncssh.KeyEncryptionError):
        await rex_connection.load_identity(path, "wrong")
    identity = await rex_connection.load_identity(path, ssh_keys.proxy_encrypted.passphrase)
    assert identity.key is not None


# -- start slots -----------------------------------------------------------------------------


class CountingSlots(asyncio.Semaphore):
    """A semaphore that remembers how many holders it had at most."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.holders = 0
        self.most = 0

    async def acquire(self) -> Literal[True]:
        await super().acquire()
        self.holders += 1
        self.most = max(self.most, self.holders)
        return True

    def release(self) -> None:
        self.holders -= 1
        super().release()


async def test_start_slots_bound_the_starts_not_the_running_scripts(rex: Rex) -> None:
    slots = CountingSlots(1)
    runners = [rex.runner("sleep 1; echo done", id=f"slot-{i}") for i in range(3)]
    for runner in runners:
        runner.start_slots = slots
    started = time.monotonic()
    results = await asyncio.gather(*(drive(r) for r in runners))
    elapsed = time.monotonic() - started
    assert [r.exit_status for r in results] == [0, 0, 0]
    assert all("done" in r.text() for r in results)
    assert slots.most == 1 and slots.holders == 0
    # Each job gave its slot back once its script ran: the three sleeps overlapped.
    assert elapsed < 2.5


async def test_an_unreachable_host_does_not_hold_a_start_slot(rex: Rex, closed_port: int) -> None:
    slots = CountingSlots(1)
    dead = rex.runner(
        "true",
        ssh_port=closed_port,
        settings={"connect_retries": 3, "connect_retry_interval": 0.5},
    )
    alive = rex.runner("echo alive")
    dead.start_slots = alive.start_slots = slots
    dead_job = asyncio.create_task(drive(dead))
    await asyncio.sleep(0.1)  # the dead host is retrying now
    result = await drive(alive)
    assert result.exit_status == 0 and "alive" in result.text()
    assert not dead_job.done()
    assert (await dead_job).exit_status == "EXCEPTION"
    assert slots.holders == 0
