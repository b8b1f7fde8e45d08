"""Remote execution end to end: Foreman → Smart Proxy (or core) → real sshd → Foreman.

* Foreman's batch launch of several hosts (the §6.4 example of the proxy notes) over mutual TLS,
  live output in status polls while a script runs, one callback per host at a fake Foreman over
  HTTPS with the exact body.
* The service killed with SIGKILL while a script runs: after the restart it re-attaches to the
  job on the host and completes the task with the real output, exit code and callback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml

from smart_proxy.root import LogsPlugin
from smart_proxy.tls import server_context
from smart_proxy_dynflow.proxy_plugin import DynflowPlugin
from smart_proxy_remote_execution_ssh.plugin import ScriptPlugin
from tests.support.certs import make_pki
from tests.support.proxy import smart_proxy
from tests.support.services import FakeForeman, free_port
from tests.support.waiting import wait_for

RUN_SCRIPT = "Proxy::RemoteExecution::Ssh::Actions::RunScript"


def job(sshd: Any, user: str, workdir: Path, script: str, task: str) -> dict[str, Any]:
    """One entry of Foreman's launch input, shaped as in §6.4."""
    return {
        "action_input": {
            "proxy_operation_name": "ssh",
            "time_to_pickup": 86400,
            "ssh_user": user,
            "effective_user": user,
            "effective_user_method": "sudo",
            "cleanup_working_dirs": True,
            "remote_working_dir": str(workdir),
            "ssh_port": sshd.port,
            "hostname": sshd.host,
            "script": script,
            "execution_timeout_interval": None,
            "secrets": {
                "ssh_password": None,
                "key_passphrase": None,
                "effective_user_password": None,
            },
            "use_batch_triggering": True,
            "first_execution": False,
            "alternative_names": {"fqdn": "web.example.com"},
            "connection_options": {
                "retry_interval": 15,
                "retry_count": 4,
                "proxy_batch_triggering": True,
            },
            "proxy_url": "https://proxy.example.com:9090",
            "proxy_action_name": RUN_SCRIPT,
            "callback": {"task_id": task, "step_id": 3},
        },
        "action_class": RUN_SCRIPT,
    }


async def _value(value: Any) -> Any:
    return value


async def test_foreman_batch_through_the_smart_proxy(
    tmp_path, sshd, ssh_users, ssh_keys, known_hosts, remote_working_dir
):
    pki = make_pki(tmp_path)
    foreman_tls = server_context(pki.server_cert, pki.server_key, pki.ca_cert)
    foreman_tls.verify_mode = ssl.CERT_REQUIRED
    foreman = FakeForeman(ssl_context=foreman_tls)
    await foreman.start()
    user = ssh_users.rexuser.name
    rex = {
        "enabled": True,
        "ssh_identity_key_file": str(ssh_keys.proxy.private),
        "known_hosts_file": str(known_hosts),
        "cockpit_integration": False,
    }
    dynflow = {
        "enabled": True,
        "database": f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}",
        "runner_refresh_interval": 0.2,
    }
    try:
        async with smart_proxy(
            tmp_path / "proxy",
            [LogsPlugin, DynflowPlugin, ScriptPlugin],
            {"dynflow": dynflow, "remote_execution_ssh": rex},
            pki=pki,
            foreman_url=foreman.url,
            foreman_ssl_ca=pki.ca_cert,
            foreman_ssl_cert=pki.client_cert,
            foreman_ssl_key=pki.client_key,
            trusted_hosts=[pki.client_cn],
        ) as proxy:
            keys = [str(uuid.uuid4()) for _ in range(3)]
            scripts = [
                "#!/bin/sh\necho start\nsleep 1\necho end\n",
                "#!/bin/sh\necho to stderr >&2\nexit 3\n",
                "#!/bin/sh\nuptime >/dev/null && echo ok\n",
            ]
            tasks = [f"c1d2e3f4-0000-4000-8000-00000000000{i}" for i in range(3)]
            body = {
                "input": {
                    key: job(sshd, user, remote_working_dir, script, task)
                    for key, script, task in zip(keys, scripts, tasks, strict=True)
                },
                "operation": "ssh",
                "options": {},
            }
            context = pki.client_ssl_context(cert=pki.client_cert, key=pki.client_key)
            async with httpx.AsyncClient(base_url=proxy.https_url, verify=context) as client:
                response = await client.post(
                    "/dynflow/tasks/launch", json=body, headers={"X-Request-Id": "4f9ce1"}
                )
                assert response.status_code == 200, response.text
                assert list(response.json()) == ["parent"]

                async def live_output() -> Any:
                    answer = await client.get(f"/dynflow/tasks/{keys[0]}/status")
                    if answer.status_code != 200:
                        return None
                    runner = next(
                        (a for a in answer.json()["actions"] if a["input"].get("task_id")), None
                    )
                    output = (runner or {}).get("output") or {}
                    records = output.get("result") or []
                    if "exit_status" in output:
                        raise AssertionError("the script ended before any live output was seen")
                    return any("start" in r["output"] for r in records)

                await wait_for(live_output, timeout=20)
                await wait_for(lambda: _value(len(foreman.callbacks) == 3), timeout=30)
        by_task = {c["callback"]["task_id"]: c for c in foreman.callbacks}
        assert set(by_task) == set(tasks)
        assert foreman.client_cns == [pki.client_cn] * 3
        for task, expected_exit, expected_text in (
            (tasks[0], 0, "start\nend\n"),
            (tasks[1], 3, "to stderr\n"),
            (tasks[2], 0, "ok\n"),
        ):
            callback = by_task[task]
            assert set(callback) == {"callback", "data"}
            assert callback["callback"] == {"task_id": task, "step_id": 3}
            data = callback["data"]
            assert set(data) >= {"result", "runner_id", "exit_status", "exit_status_timestamp"}
            assert data["exit_status"] == expected_exit
            assert isinstance(data["exit_status_timestamp"], float)
            text = "".join(r["output"] for r in data["result"] if r["output_type"] == "stdout")
            assert text == expected_text
            for record in data["result"]:
                assert set(record) >= {"output_type", "output", "timestamp"}
                assert isinstance(record["timestamp"], float)
    finally:
        await foreman.stop()


def _start_core(config_dir: Path, cwd: Path) -> subprocess.Popen[bytes]:
    script = Path(sys.executable).parent / "smart-proxy-dynflow-core"
    command = (
        [str(script)] if script.exists() else [sys.executable, "-m", "smart_proxy_dynflow.service"]
    )
    env = {k: v for k, v in os.environ.items() if k != "DYNFLOW_DB_CONN_STRING"}
    return subprocess.Popen(
        [*command, "-1", "-c", str(config_dir)],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(cwd / "core-stderr.txt", "ab"),  # the child owns it
    )


async def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            assert proc.poll() is None, "the core exited"
            assert time.monotonic() < deadline, "the core did not listen"
            await asyncio.sleep(0.05)


async def test_sigkill_while_scripts_run_then_restart(
    tmp_path, sshd, ssh_users, ssh_keys, known_hosts, remote_working_dir
):
    """Beyond the original: the job survives the proxy's death and is completed afterwards."""
    foreman = FakeForeman(port=free_port())
    await foreman.start()
    port = free_port()
    config = tmp_path / "config"
    (config / "settings.d").mkdir(parents=True)
    (config / "settings.yml").write_text(
        yaml.safe_dump(
            {
                "listen": "127.0.0.1",
                "port": port,
                "database": str(tmp_path / "dynflow.sqlite"),
                "foreman_url": foreman.url,
                "log_file": str(tmp_path / "core.log"),
                "log_level": "INFO",
                "runner_refresh_interval": 0.2,
                "callback_retry_interval": 0.2,
            }
        )
    )
    (config / "settings.d" / "remote_execution_ssh.yml").write_text(
        yaml.safe_dump(
            {
                "enabled": True,
                "ssh_identity_key_file": str(ssh_keys.proxy.private),
                "known_hosts_file": str(known_hosts),
                "cockpit_integration": False,
            }
        )
    )
    user = ssh_users.rexuser.name
    keys = [str(uuid.uuid4()), str(uuid.uuid4())]
    scripts = {
        keys[0]: "#!/bin/sh\necho before\nsleep 4\necho after\nexit 7\n",  # still running
        keys[1]: "#!/bin/sh\necho quick\nsleep 1.5\necho done\n",  # ends while the proxy is dead
    }
    proc = _start_core(config, tmp_path)
    try:
        await _wait_listening(port, proc)
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base) as client:
            body = {
                "operation": "ssh",
                "input": {
                    key: job(sshd, user, remote_working_dir, script, f"foreman-{key}")
                    for key, script in scripts.items()
                },
            }
            assert (await client.post("/tasks/launch", json=body)).status_code == 200

            async def printed() -> Any:
                for key, word in ((keys[0], "before"), (keys[1], "quick")):
                    answer = await client.get(f"/tasks/{key}/status")
                    if answer.status_code != 200:
                        return False
                    records = [
                        r
                        for a in answer.json()["actions"]
                        for r in (a.get("output") or {}).get("result") or []
                    ]
                    if not any(word in r["output"] for r in records):
                        return False
                return True

            await wait_for(printed, timeout=20)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert foreman.callbacks == []
        await asyncio.sleep(2.0)  # the second script finishes while nobody watches
        proc = _start_core(config, tmp_path)
        await _wait_listening(port, proc)
        await wait_for(lambda: _value(len(foreman.callbacks) == 2), timeout=30)
        await asyncio.sleep(0.5)
        assert len(foreman.callbacks) == 2
        by_task = {c["callback"]["task_id"]: c["data"] for c in foreman.callbacks}
        first, second = by_task[f"foreman-{keys[0]}"], by_task[f"foreman-{keys[1]}"]
        stdout = lambda data: "".join(  # noqa: E731
            r["output"] for r in data["result"] if r["output_type"] == "stdout"
        )
        assert (first["exit_status"], stdout(first)) == (7, "before\nafter\n")
        assert (second["exit_status"], stdout(second)) == (0, "quick\ndone\n")
        assert list(remote_working_dir.glob("foreman-ssh-cmd-*")) == []  # cleaned up
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        await foreman.stop()
