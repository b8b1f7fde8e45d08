"""The SSH test harness itself: real sshd, users, keys, sudo/su, noexec and host keys.

Each test talks to a real OpenSSH server through the OpenSSH client and/or asyncssh.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.support import sshd as sshd_support
from tests.support.sshd import SUDO_PROMPT, Sshd, SshKeys, TestUsers

TIMEOUT = 15


async def run(argv: list[str], input: bytes | None = None) -> tuple[int, str, str]:
    """Run a local command (the OpenSSH client) to completion: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(input), TIMEOUT)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def connect(
    server: Sshd, username: str, address: str | None = None, **kwargs: Any
) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """asyncssh to ``server``: no host-key check, no agent, no default keys unless given."""
    options: dict[str, Any] = {"known_hosts": None, "client_keys": None, "agent_path": None}
    options.update(kwargs)
    async with asyncssh.connect(
        address or server.host, server.port, username=username, connect_timeout=TIMEOUT, **options
    ) as conn:
        yield conn


async def read_until(stream: asyncssh.SSHReader[str], needle: str) -> str:
    seen = ""
    while needle not in seen:
        chunk = await asyncio.wait_for(stream.read(1024), TIMEOUT)
        if not chunk:
            raise AssertionError(f"EOF before {needle!r}; got {seen!r}")
        seen += chunk
    return seen


# -- logins ----------------------------------------------------------------------------------


async def test_openssh_client_logs_in_with_proxy_key(
    sshd: Sshd, ssh_users: TestUsers, ssh_keys: SshKeys, known_hosts: Path
) -> None:
    user = ssh_users.rexuser
    argv = sshd.ssh_argv(
        user.name,
        'id -un; echo "$HOME"; echo "$SHELL"',
        identity=ssh_keys.proxy,
        known_hosts=known_hosts,
        options=["StrictHostKeyChecking=accept-new"],
    )
    code, out, err = await run(argv)
    assert code == 0, err
    assert out.split() == [user.name, str(user.home), "/bin/sh"]
    # accept-new pinned the plain host key (the host certificate has no CA entry here)
    assert sshd.known_hosts_lines()[0] in known_hosts.read_text()
    assert pwd.getpwnam(user.name).pw_shell == "/bin/sh"


async def test_asyncssh_key_login_exit_status_and_stderr(
    sshd: Sshd, ssh_users: TestUsers, ssh_keys: SshKeys
) -> None:
    async with connect(sshd, ssh_users.rexuser.name, client_keys=[str(ssh_keys.rsa.private)]) as c:
        result = await c.run("echo out; echo err >&2; exit 3")
    assert (result.exit_status, result.stdout, result.stderr) == (3, "out\n", "err\n")


async def test_asyncssh_password_login(sshd: Sshd, ssh_users: TestUsers) -> None:
    user = ssh_users.rexuser
    async with connect(sshd, user.name, password=user.password) as conn:
        assert (await conn.run("id -un", check=True)).stdout == f"{user.name}\n"
    with pytest.raises(asyncssh.PermissionDenied):
        async with connect(sshd, user.name, password="wrong-" + user.password):
            pass


async def test_password_login_through_pam(ssh_users: TestUsers) -> None:
    user = ssh_users.rexuser
    with Sshd(use_pam=True, allow_users=ssh_users.names) as server:
        server.start()
        assert "UsePAM yes" in server.config_path.read_text()
        async with connect(server, user.name, password=user.password) as conn:
            assert (await conn.run("id -un", check=True)).stdout == f"{user.name}\n"


async def test_encrypted_key_needs_its_passphrase(
    sshd: Sshd, ssh_users: TestUsers, ssh_keys: SshKeys, tmp_path: Path
) -> None:
    key = ssh_keys.proxy_encrypted
    assert key.passphrase
    keygen = sshd_support.SSH_KEYGEN_BIN
    # The runner's probe: ssh-keygen -y fails on an encrypted key without the passphrase.
    assert (await run([keygen, "-y", "-P", "", "-f", str(key.private)]))[0] != 0
    code, out, _ = await run([keygen, "-y", "-P", key.passphrase, "-f", str(key.private)])
    assert code == 0 and out.split()[:2] == key.public_key().split()

    argv = sshd.ssh_argv(ssh_users.rexuser.name, "id -un", identity=key)
    assert (await run(argv))[0] == 255  # BatchMode: nobody to ask for the passphrase
    askpass = tmp_path / "askpass"
    askpass.write_text(f"#!/bin/sh\necho '{key.passphrase}'\n")
    askpass.chmod(0o700)
    env = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force"}
    argv = sshd.ssh_argv(ssh_users.rexuser.name, "id -un", identity=key, batch=False)
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdin=subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE
    )
    out_bytes, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert (proc.returncode, out_bytes.decode()) == (0, f"{ssh_users.rexuser.name}\n")


async def test_user_certificate_alone_is_enough(
    sshd: Sshd, ssh_users: TestUsers, ssh_keys: SshKeys
) -> None:
    user = ssh_users.rexuser
    sshd.set_authorized_keys(user.name, [])  # only TrustedUserCAKeys can let the key in
    key = ssh_keys.proxy
    assert key.has_certificate
    async with connect(
        sshd, user.name, client_keys=[(str(key.private), str(key.certificate))]
    ) as conn:
        assert (await conn.run("id -un")).stdout == f"{user.name}\n"
    # A key *path* makes asyncssh load <key>-cert.pub as well; the bare key object does not.
    bare = asyncssh.read_private_key(str(key.private))
    with pytest.raises(asyncssh.PermissionDenied):  # the bare key is no longer authorized
        async with connect(sshd, user.name, client_keys=[bare]):
            pass
    # OpenSSH picks up <key>-cert.pub next to the identity file by itself.
    code, out, err = await run(sshd.ssh_argv(user.name, "id -un", identity=key))
    assert (code, out) == (0, f"{user.name}\n"), err


async def test_stranger_key_is_rejected(
    sshd: Sshd, ssh_users: TestUsers, ssh_keys: SshKeys
) -> None:
    argv = sshd.ssh_argv(ssh_users.rexuser.name, "true", identity=ssh_keys.stranger)
    code, _, err = await run(argv)
    assert code == 255
    assert "Permission denied" in err


# -- user switching --------------------------------------------------------------------------


async def test_sudo_with_password_switches_to_target(
    sshd: Sshd, ssh_users: TestUsers, ssh_keys: SshKeys
) -> None:
    user, target = ssh_users.rexuser, ssh_users.rextarget
    sudo = f"sudo -S -p '{SUDO_PROMPT}' -u {target.name} id -un"
    async with connect(sshd, user.name, client_keys=[str(ssh_keys.rsa.private)]) as conn:
        good = await conn.run(sudo, input=f"{user.password}\n")
        assert (good.exit_status, good.stdout) == (0, f"{target.name}\n")
        assert SUDO_PROMPT in good.stderr  # timestamp_timeout=0: it prompts every time
        cached = await conn.run(f"sudo -n -u {target.name} true")
        assert cached.exit_status == 1  # nothing cached: the next sudo prompts again
        assert "password is required" in cached.stderr
        started = time.monotonic()
        bad = await conn.run(sudo, input="not-the-password\n")
        assert bad.exit_status == 1
        assert "Sorry, try again." in bad.stderr
        assert time.monotonic() - started < 5  # pam_unix delays a failure by ~2 s


async def test_sudo_is_refused_without_rule(
    sshd: Sshd, ssh_users: TestUsers, ssh_keys: SshKeys
) -> None:
    user = ssh_users.rexnosudo
    async with connect(sshd, user.name, client_keys=[str(ssh_keys.rsa.private)]) as conn:
        result = await conn.run(
            f"sudo -S -u {ssh_users.rextarget.name} id -un", input=f"{user.password}\n"
        )
    assert result.exit_status == 1
    assert "not allowed" in result.stderr or "not in the sudoers" in result.stderr


async def test_su_over_pty_with_target_password(
    sshd: Sshd, ssh_users: TestUsers, ssh_keys: SshKeys
) -> None:
    target = ssh_users.rextarget
    async with connect(
        sshd, ssh_users.rexuser.name, client_keys=[str(ssh_keys.rsa.private)]
    ) as conn:
        proc = await conn.create_process(
            f"su - {target.name} -c 'id -un'", request_pty=True, term_type="xterm"
        )
        prompt = await read_until(proc.stdout, "Password: ")
        proc.stdin.write(f"{target.password}\n")  # su flushes input sent before its prompt
        rest = await asyncio.wait_for(proc.stdout.read(), TIMEOUT)
        await asyncio.wait_for(proc.wait(), TIMEOUT)
    assert proc.exit_status == 0, prompt + rest
    assert rest.split() == [target.name]  # the PTY does not echo the password


async def test_setfacl_grant_lets_target_read_user_file(
    sshd: Sshd, ssh_users: TestUsers, ssh_keys: SshKeys, remote_working_dir: Path
) -> None:
    user, target = ssh_users.rexuser, ssh_users.rextarget
    script = remote_working_dir / "script"
    command = (
        f"printf '#!/bin/sh\\necho hi from $(id -un)\\n' > {script} && chmod 500 {script}"
        f" && setfacl -m u:{target.name}:rx {script}"
        f" && sudo -S -p '' -u {target.name} {script}"
    )
    async with connect(sshd, user.name, client_keys=[str(ssh_keys.rsa.private)]) as conn:
        result = await conn.run(command, input=f"{user.password}\n")
    assert (result.exit_status, result.stdout) == (0, f"hi from {target.name}\n"), result.stderr
    assert os.stat(script).st_uid == user.uid


# -- host features ---------------------------------------------------------------------------


async def test_script_in_noexec_dir_exits_126(
    sshd: Sshd, ssh_users: TestUsers, ssh_keys: SshKeys, noexec_dir: Path
) -> None:
    script = noexec_dir / "script"
    command = f"printf '#!/bin/sh\\nexit 0\\n' > {script} && chmod 500 {script} && {script}"
    async with connect(
        sshd, ssh_users.rexuser.name, client_keys=[str(ssh_keys.rsa.private)]
    ) as conn:
        result = await conn.run(command)
        assert result.exit_status == 126, result.stderr
        assert "Permission denied" in result.stderr
        assert (await conn.run(f"sh {script}")).exit_status == 0  # readable, just not exec


async def test_unshare_kill_child_works_for_ssh_user(
    sshd: Sshd, ssh_users: TestUsers, ssh_keys: SshKeys
) -> None:
    async with connect(
        sshd, ssh_users.rexuser.name, client_keys=[str(ssh_keys.rsa.private)]
    ) as conn:
        result = await conn.run("unshare --fork --kill-child true")
    assert result.exit_status == 0, f"unshare --fork --kill-child fails here: {result.stderr}"


# -- server lifecycle ------------------------------------------------------------------------


async def test_restart_with_new_host_key_is_detected(
    sshd: Sshd, ssh_users: TestUsers, ssh_keys: SshKeys, known_hosts: Path
) -> None:
    def argv(checking: str) -> list[str]:
        return sshd.ssh_argv(
            ssh_users.rexuser.name,
            "true",
            identity=ssh_keys.rsa,
            known_hosts=known_hosts,
            options=[f"StrictHostKeyChecking={checking}"],
        )

    code, _, err = await run(argv("accept-new"))
    assert code == 0, err
    old_line = sshd.known_hosts_lines()[0]
    assert old_line in known_hosts.read_text()

    port = sshd.port
    sshd.restart(new_host_key=True)
    assert sshd.port == port
    assert sshd.known_hosts_lines()[0] != old_line

    code, _, err = await run(argv("accept-new"))
    assert code == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in err
    # The runner's pruning: ssh-keygen -R [host]:port, then accept-new learns the new key.
    host = sshd_support.known_hosts_host(sshd.host, sshd.port)
    code, _, err = await run([sshd_support.SSH_KEYGEN_BIN, "-R", host, "-f", str(known_hosts)])
    assert code == 0, err
    code, _, err = await run(argv("accept-new"))
    assert code == 0, err
    assert sshd.known_hosts_lines()[0] in known_hosts.read_text()


async def test_cert_authority_known_hosts_survives_key_rotation(
    sshd: Sshd, ssh_users: TestUsers, ssh_keys: SshKeys, known_hosts: Path
) -> None:
    known_hosts.write_text(ssh_keys.host_ca_known_hosts_line() + "\n")
    argv = sshd.ssh_argv(
        ssh_users.rexuser.name,
        "true",
        identity=ssh_keys.rsa,
        known_hosts=known_hosts,
        options=["StrictHostKeyChecking=yes"],
    )
    assert (await run(argv))[0] == 0
    sshd.restart(new_host_key=True)  # signed by the same host CA
    assert (await run(argv))[0] == 0
    async with connect(
        sshd,
        ssh_users.rexuser.name,
        known_hosts=str(known_hosts),
        client_keys=[str(ssh_keys.rsa.private)],
    ) as conn:
        assert (await conn.run("true")).exit_status == 0

    sshd.stop()
    sshd.rotate_host_key(certificate=False)  # a bare key: the CA cannot vouch for it
    sshd.start()
    code, _, err = await run(argv)
    assert code == 255
    assert "Host key verification failed" in err


async def test_one_sshd_serves_several_loopback_addresses(
    ssh_users: TestUsers, ssh_keys: SshKeys
) -> None:
    addresses = sshd_support.loopback_addresses(2, first=2)
    with Sshd(addresses=addresses, allow_users=ssh_users.names) as server:
        server.authorize(ssh_users.rexuser.name, ssh_keys.rsa)
        server.start()
        seen = []
        for address in addresses:
            async with connect(
                server, ssh_users.rexuser.name, address, client_keys=[str(ssh_keys.rsa.private)]
            ) as conn:
                seen.append((await conn.run("echo $SSH_CONNECTION")).stdout.split()[2])
    assert seen == addresses


async def test_stop_refuses_connections_until_started_again(
    sshd: Sshd, ssh_users: TestUsers, ssh_keys: SshKeys, closed_port: int
) -> None:
    argv = sshd.ssh_argv(
        ssh_users.rexuser.name, "true", identity=ssh_keys.rsa, options=["ConnectTimeout=5"]
    )
    sshd.stop()
    assert not sshd.running
    code, _, err = await run(argv)
    assert code == 255 and "Connection refused" in err
    sshd.start()
    assert (await run(argv))[0] == 0

    with pytest.raises(OSError):
        sshd_support.wait_for_banner("127.0.0.1", closed_port)


async def test_kill_sessions_drops_running_commands(
    sshd: Sshd, ssh_users: TestUsers, ssh_keys: SshKeys
) -> None:
    argv = sshd.ssh_argv(ssh_users.rexuser.name, "echo started; sleep 60", identity=ssh_keys.rsa)
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), TIMEOUT) == b"started\n"
    assert sshd.kill_sessions() >= 2  # the per-connection sshd and the shell/sleep
    assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 255
    assert sshd.running  # still listening
    code, _, err = await run(sshd.ssh_argv(ssh_users.rexuser.name, "true", identity=ssh_keys.rsa))
    assert code == 0, err


async def test_sweep_removes_leftovers_of_dead_runs_only(ssh_users: TestUsers) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = sshd_support.TMP_ROOT / f"{sshd_support.TEMP_PREFIX}sshd-{dead.pid}-x1"
    live = sshd_support.make_temp_dir("sshd")
    stale.mkdir()
    try:
        removed = sshd_support.sweep_leftovers()
        assert str(stale) in removed and not stale.exists()
        assert live.exists()
        for user in ssh_users.all:
            assert pwd.getpwnam(user.name).pw_uid == user.uid
        assert ssh_users.sudoers_file.exists()
    finally:
        for path in (stale, live):
            if path.exists():
                path.rmdir()
