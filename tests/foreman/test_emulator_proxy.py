"""The rest of what Foreman asks the shipped proxy: refresh (``/v2/features``, REX's keys),
``/version``, the proxy selection's count, the legacy trigger, and the web-console session as
``foreman-cockpit-session`` opens it (tests/foreman/emulator.py)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from tests.foreman import emulator as fm
from tests.foreman.emulator import ForemanEmulator
from tests.smart_proxy_remote_execution_ssh.conftest import (  # noqa: F401
    closed_port,
    ssh_keys,
    ssh_users,
    sshd,
)
from tests.support.sshd import Sshd, SshKeys, TestUsers

from .test_emulator_jobs import shipped


def cockpit_params(hostname: str, port: int, user: str, command: str, proxy: str) -> dict:
    """``ScriptExecutionProvider.ssh_params`` + ``command``, as the session script sends it."""
    return {
        "hostname": hostname,
        "proxy": proxy,
        "ssh_user": user,
        "ssh_port": port,
        "ssh_password": None,
        "ssh_key_passphrase": None,
        "effective_user_password": None,
        "command": command,
    }


async def test_refresh_features_keys_version_and_count(tmp_path: Path) -> None:
    key = tmp_path / "ssh" / "id_rsa_foreman_proxy"
    async with (
        ForemanEmulator() as foreman,
        shipped(tmp_path, foreman, rex={"cockpit_integration": False}) as (_, proxy),
    ):
        record = await foreman.refresh_proxy(proxy)
        assert record.errors == []
        assert set(record.features) == {"Dynflow", "Script", "Logs"}, record.features
        assert set(record.features["Dynflow"]["capabilities"]) >= {"ssh", "single"}
        assert not record.has_capability("Script", "cockpit")
        assert record.pubkey == key.with_suffix(".pub").read_text().strip()
        assert record.ca_pubkey is None  # none configured: an empty answer
        v2 = foreman.requests_to("/v2/features")[0]
        assert v2.status == 200 and "Content-Type" not in v2.headers
        assert all(f["state"] == "running" for f in v2.answer.values())
        version = await foreman.proxy_version(proxy)
        assert isinstance(version["version"], str)
        assert {"dynflow", "script"} <= set(version["modules"])
        assert await foreman.tasks_count(proxy, "running") == 0
        assert await foreman.operations(proxy) == ["single", "ssh"]
        with pytest.raises(fm.ProxyError) as gone:  # left the original in 0.11.0
            await foreman.drop_from_known_hosts(proxy, "host.example.com")
        assert gone.value.status == 404


async def test_legacy_trigger_answers_a_task_id_and_calls_back(tmp_path: Path) -> None:
    """``DynflowProxy#trigger_task`` (``POST /dynflow/tasks``): no caller in current Foreman,
    still served; its callback reaches the controller like any other."""
    async with ForemanEmulator() as foreman, shipped(tmp_path, foreman) as (_, proxy):
        task_id = str(uuid.uuid4())
        action_input = fm.proxy_input(
            hostname="legacy.example.com",
            script="true",
            proxy_url=proxy.url,
            task_id=task_id,
            request_id=str(uuid.uuid4()),
        )
        answer = await foreman.trigger_task(proxy, fm.RUN_SCRIPT, action_input)
        assert set(answer) == {"task_id"}
        for _ in range(400):
            if foreman.callbacks_for(task_id):
                break
            await asyncio.sleep(0.05)
        (entry,) = foreman.callbacks_for(task_id)
        assert entry.step_id == fm.RUN_STEP_ID and entry.delivery == "unknown task"
        assert entry.data["exit_status"] == 0 and isinstance(entry.data["result"], list)


async def test_cockpit_session_as_foreman_cockpit_session_opens_it(
    tmp_path: Path,
    sshd: Sshd,  # noqa: F811
    ssh_users: TestUsers,  # noqa: F811
    ssh_keys: SshKeys,  # noqa: F811
    closed_port: int,  # noqa: F811
) -> None:
    user = ssh_users.rexuser.name
    rex = {"cockpit_integration": True, "ssh_identity_key_file": str(ssh_keys.proxy.private)}
    async with (
        ForemanEmulator() as foreman,
        shipped(tmp_path, foreman, lines=None, rex=rex) as (_, proxy),
    ):
        record = await foreman.refresh_proxy(proxy)
        assert record.has_capability("Script", "cockpit")  # REX picks this proxy for it
        # a session: "Status: 101", then the raw stream of the command
        reply = await foreman.cockpit_session(
            proxy, cockpit_params(sshd.host, sshd.port, user, "cat", proxy.url)
        )
        try:
            assert (reply.status, reply.problem) == (101, None), reply
            assert reply.headers == {"Status": "101", "Connection": "upgrade", "Upgrade": "raw"}
            assert reply.writer is not None and reply.reader is not None
            reply.writer.write(b"ping\n")
            await reply.writer.drain()
            assert await asyncio.wait_for(reply.reader.readexactly(5), 15) == b"ping\n"
        finally:
            await reply.close()
        # a host nobody listens on: a 4xx whose body the session script shows to the user
        reply = await foreman.cockpit_session(
            proxy, cockpit_params("127.0.0.1", closed_port, user, "cockpit-bridge", proxy.url)
        )
        assert (reply.status, reply.problem) == (400, "access-denied"), reply
        assert "Could not establish connection" in (reply.message or "")


async def test_cockpit_disabled_answers_plain_http_like_the_original(tmp_path: Path) -> None:
    """Without ``cockpit_integration`` the route does not exist: a plain ``HTTP/1.1 404``,
    whose status line the session script cannot parse ("wrong header line format"), as with
    the original's Sinatra 404 (its "does not support web console" branch needs ``Status:``)."""
    async with (
        ForemanEmulator() as foreman,
        shipped(tmp_path, foreman, rex={"cockpit_integration": False}) as (_, proxy),
    ):
        reply = await foreman.cockpit_session(
            proxy, cockpit_params("h", 22, "root", "cockpit-bridge", proxy.url)
        )
        assert (reply.problem, reply.message) == (
            "crash",
            "Net::HTTPBadResponse: wrong header line format",
        )
