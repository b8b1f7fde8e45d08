"""Secrets at rest, through the real service (``smart-proxy-dynflow-core``) and a real sshd.

A job whose SSH login and sudo both need a password (``rexuser`` has no key the proxy holds):

* the database file, its WAL and shared memory, the service's log (at DEBUG) and every HTTP
  answer of the job's life (launch, task status, bulk statuses, console pages, the callback
  body Foreman receives) never contain the passwords in clear text;
* the database file, its side files and the directory the service made are owner-only, the key
  file beside the SSH key too;
* while the job runs the password is stored sealed, so a restart after SIGKILL re-attaches to
  the running script (it logs in with the password again) and reports its real result once;
* once the exit status is stored the secrets are erased from every stored input.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml

from smart_proxy_remote_execution_ssh.keygen import ensure_key
from tests.smart_proxy_remote_execution_ssh.test_end_to_end import (
    RUN_SCRIPT,
    _start_core,
    _wait_listening,
)
from tests.support import sshd as sshd_support
from tests.support.services import FakeForeman, free_port
from tests.support.waiting import wait_for

PASSPHRASE = "MARKER-passphrase-3b7e"  # an unencrypted key ignores it; it must not leak either
SEALED = "sealed:v1:"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def stored_inputs(database: Path) -> dict[str, dict[str, Any]]:
    """Every action's stored input by class (read-only, beside the running service)."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows = connection.execute("SELECT class, input FROM dynflow_actions").fetchall()
    finally:
        connection.close()
    return {name.rsplit(".", 1)[-1]: json.loads(text) for name, text in rows}


def database_bytes(database: Path) -> bytes:
    return b"".join(path.read_bytes() for path in database.parent.glob(database.name + "*"))


async def _value(value: Any) -> Any:
    return value


async def test_passwords_never_in_clear_and_a_restart_reattaches_with_the_password(
    tmp_path, sshd, ssh_users, known_hosts, remote_working_dir
):
    user, target = ssh_users.rexuser, ssh_users.rextarget
    markers = [user.password.encode(), PASSPHRASE.encode()]
    # A key no account authorizes (and without a certificate): the login takes the password.
    identity = tmp_path / "ssh" / "id_rsa_foreman_proxy"
    ensure_key(identity)
    foreman = FakeForeman(port=free_port())
    await foreman.start()
    port = free_port()
    database = tmp_path / "state" / "dynflow.sqlite"
    log_file = tmp_path / "core.log"
    config = tmp_path / "config"
    (config / "settings.d").mkdir(parents=True)
    (config / "settings.yml").write_text(
        yaml.safe_dump(
            {
                "listen": "127.0.0.1",
                "port": port,
                "database": str(database),
                "foreman_url": foreman.url,
                "log_file": str(log_file),
                "log_level": "DEBUG",
                "console_http": True,
                "runner_refresh_interval": 0.2,
                "callback_retry_interval": 0.2,
            }
        )
    )
    (config / "settings.d" / "remote_execution_ssh.yml").write_text(
        yaml.safe_dump(
            {
                "enabled": True,
                "ssh_identity_key_file": str(identity),
                "known_hosts_file": str(known_hosts),
                "cockpit_integration": False,
            }
        )
    )
    answers: list[bytes] = []  # every HTTP answer of the job's life

    async def ask(client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> httpx.Response:
        response = await client.request(method, url, **kw)
        answers.append(response.content + json.dumps(dict(response.headers)).encode())
        return response

    key, task = str(uuid.uuid4()), f"foreman-{uuid.uuid4()}"
    with sshd_support.user_directory(target) as gate:
        release = gate / "release"
        script = (
            "#!/bin/sh\necho started\n"
            f"while [ ! -e {release} ]; do sleep 0.1; done\n"
            "id -un\necho finished\n"
        )
        action_input = {
            "hostname": sshd.host,
            "ssh_port": sshd.port,
            "ssh_user": user.name,
            "effective_user": target.name,
            "effective_user_method": "sudo",
            "remote_working_dir": str(remote_working_dir),
            "script": script,
            "secrets": {
                "ssh_password": user.password,
                "key_passphrase": PASSPHRASE,
                "effective_user_password": user.password,
            },
            "connection_options": {"retry_interval": 1, "retry_count": 2},
            "callback": {"task_id": task, "step_id": 3},
        }
        body = {
            "operation": "ssh",
            "input": {key: {"action_class": RUN_SCRIPT, "action_input": action_input}},
        }
        proc = _start_core(config, tmp_path)
        try:
            await _wait_listening(port, proc)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                launched = await ask(client, "POST", "/tasks/launch", json=body)
                assert launched.status_code == 200, launched.text
                parent = launched.json()["parent"]["task_id"]

                async def started() -> Any:
                    answer = await ask(client, "GET", f"/tasks/{key}/status")
                    if answer.status_code != 200:
                        return False
                    return "started" in answer.text

                await wait_for(started, timeout=30)
                statuses = await ask(client, "POST", "/tasks/statuses", json={"task_ids": [key]})
                assert statuses.status_code == 200
                for page in (
                    "/console",
                    f"/console/{key}",
                    f"/console/{key}?tab=plan",
                    f"/console/{key}/live",
                    f"/console/{parent}",
                    f"/console/{key}/actions/2/output.txt",
                ):
                    answer = await ask(client, "GET", page)
                    assert answer.status_code == 200, (page, answer.text[:300])
            # Kept while the job needs it (a restart re-attaches with it), sealed.
            running = stored_inputs(database)["ScriptRunnerAction"]["secrets"]
            assert all(value.startswith(SEALED) for value in running.values()), running
            assert stored_inputs(database)["BatchAction"]["input_hash"][key]["action_input"][
                "secrets"
            ] == {"ssh_password": None, "key_passphrase": None, "effective_user_password": None}
            # Owner-only files, in the directory the service made.
            assert mode(database.parent) == 0o700
            for path in database.parent.iterdir():
                assert mode(path) == 0o600, path
            assert mode(identity.with_name("secrets.key")) == 0o600
            on_disk = database_bytes(database)
            assert not any(marker in on_disk for marker in markers)

            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            on_disk = database_bytes(database)
            assert not any(marker in on_disk for marker in markers)
            assert foreman.callbacks == []

            proc = _start_core(config, tmp_path)
            await _wait_listening(port, proc)
            release.touch()
            await wait_for(lambda: _value(len(foreman.callbacks) == 1), timeout=40)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

                async def stopped() -> bool:  # the callback is sent before the plan ends
                    answer = await ask(client, "GET", f"/tasks/{key}/status")
                    return bool(answer.json()["state"] == "stopped")

                await wait_for(stopped, timeout=30)
                for page in (f"/console/{key}", f"/console/{parent}"):
                    assert (await ask(client, "GET", page)).status_code == 200
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
            await foreman.stop()

    (callback,) = foreman.callbacks
    data = callback["data"]
    stdout = "".join(r["output"] for r in data["result"] if r["output_type"] == "stdout")
    # Re-attached with the password: the one run of the script, its real end.
    assert (data["exit_status"], stdout) == (0, f"started\n{target.name}\nfinished\n")
    # Erased once the exit status was stored.
    inputs = stored_inputs(database)
    assert inputs["ScriptRunnerAction"]["secrets"] == {
        "ssh_password": None,
        "key_passphrase": None,
        "effective_user_password": None,
    }
    assert SEALED not in json.dumps(inputs)
    # Nowhere in clear text: database, WAL, log, HTTP answers, what Foreman received.
    places = {
        "database": database_bytes(database),
        "log": log_file.read_bytes(),
        "stderr": (tmp_path / "core-stderr.txt").read_bytes(),
        "answers": b"\n".join(answers),
        "foreman": b"\n".join(r["body"] + repr(r["headers"]).encode() for r in foreman.requests),
    }
    assert b"Started POST /tasks/launch" in places["log"]
    for place, data_bytes in places.items():
        for marker in markers:
            assert marker not in data_bytes, f"{marker!r} found in the {place}"
        if place != "database":  # the sealed form is not shown or logged either
            assert SEALED.encode() not in data_bytes, f"a sealed secret found in the {place}"
