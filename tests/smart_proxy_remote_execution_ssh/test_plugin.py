"""The `script` plugin in the Smart Proxy and in the standalone core (simulated runs, §5.14)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from smart_proxy.root import LogsPlugin
from smart_proxy_dynflow.core import Core, CoreConfig
from smart_proxy_dynflow.proxy_plugin import DynflowPlugin
from smart_proxy_remote_execution_ssh.keygen import ensure_key
from smart_proxy_remote_execution_ssh.plugin import ScriptPlugin, core_plugin
from smart_proxy_remote_execution_ssh.state import RexState
from tests.support.proxy import smart_proxy
from tests.support.services import core_service, make_config
from tests.support.waiting import wait_for, wait_plan_state

RUN_SCRIPT = "Proxy::RemoteExecution::Ssh::Actions::RunScript"
OLD_RUN_SCRIPT = "ForemanRemoteExecutionCore::Actions::RunScript"


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "id_rsa_foreman_proxy"
    ensure_key(path)
    return path


@pytest.fixture
def simulated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    lines = tmp_path / "simulated-output.txt"
    lines.write_text("first line\nsecond line\n")
    monkeypatch.setenv("REX_SIMULATE", "yes")
    monkeypatch.setenv("REX_SIMULATE_PATH", str(lines))
    return lines


def batch(hosts: list[str], action_class: str = RUN_SCRIPT) -> dict[str, Any]:
    return {
        str(uuid.uuid4()): {
            "action_class": action_class,
            "action_input": {
                "hostname": host,
                "script": "uptime",
                "ssh_user": "root",
                "effective_user": "root",
                "secrets": {"ssh_password": "s3cret", "key_passphrase": None},
                "callback": {"task_id": f"foreman-{host}", "step_id": 3},
                "proxy_url": "https://proxy.example.com:9090",
            },
        }
        for host in hosts
    }


async def _value(value: Any) -> Any:
    return value


async def test_standalone_core_runs_the_ssh_operation(tmp_path, key, simulated, foreman):
    config = make_config(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", foreman.url)

    def register(core: Any) -> None:
        core_plugin.register(core, {"enabled": True, "ssh_identity_key_file": str(key)})

    async with core_service(config, register=register) as svc:
        operations = (await svc.client.get("/tasks/operations")).json()
        assert operations == ["single", "ssh"]
        inputs = batch(["web1.example.com", "web2.example.com"])
        inputs.update(batch(["web3.example.com"], OLD_RUN_SCRIPT))
        response = await svc.client.post(
            "/tasks/launch", json={"operation": "ssh", "input": inputs, "options": {}}
        )
        assert response.json()["parent"]["result"] == "success"
        for key_id in inputs:
            plan = await wait_plan_state(svc.world, key_id)
            assert plan.result == "success"
            status = (await svc.client.get(f"/tasks/{key_id}/status")).json()
            runner = next(a for a in status["actions"] if "task_id" in a["input"])
            assert [r["output"] for r in runner["output"]["result"]] == [
                "first line\n",
                "second line\n",
            ]
            assert runner["output"]["exit_status"] == 0
            assert "s3cret" not in str(status)
        await wait_for(lambda: _value(len(foreman.callbacks) == 3))
        assert sorted(c["callback"]["task_id"] for c in foreman.callbacks) == [
            "foreman-web1.example.com",
            "foreman-web2.example.com",
            "foreman-web3.example.com",
        ]


async def test_inside_the_smart_proxy(tmp_path, key, simulated, foreman):
    ca = tmp_path / "keys" / "ca.pub"
    ca.write_text("ssh-ed25519 AAAAC3NzaCA user-ca\n")
    key.with_name(key.name + "-cert.pub").write_text("cert\n")
    rex = {
        "enabled": True,
        "ssh_identity_key_file": str(key),
        "ssh_user_ca_public_key_file": str(ca),
    }
    dynflow = {"enabled": True, "database": f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"}
    async with smart_proxy(
        tmp_path / "proxy",
        [LogsPlugin, DynflowPlugin, ScriptPlugin],
        {"dynflow": dynflow, "remote_execution_ssh": rex},
        foreman_url=foreman.url,
    ) as proxy:
        async with httpx.AsyncClient(base_url=proxy.http_url) as client:
            features = (await client.get("/v2/features")).json()
            assert features["script"]["state"] == "running"
            assert features["script"]["capabilities"] == ["cockpit"]
            assert "ssh" in features["dynflow"]["capabilities"]
            pubkey = await client.get("/ssh/pubkey")
            assert pubkey.text == key.with_name(key.name + ".pub").read_text()
            assert (await client.get("/ssh/ca_pubkey")).text == ca.read_text()
            inputs = batch(["db1.example.com"])
            response = await client.post(
                "/dynflow/tasks/launch", json={"operation": "ssh", "input": inputs}
            )
            assert response.json()["parent"]["result"] == "success"
            (task_id,) = inputs
            core = proxy.plugin("dynflow").core
            plan = await wait_plan_state(core.world, task_id)
            assert plan.result == "success"
        await wait_for(lambda: _value(foreman.callbacks))
        assert foreman.callbacks[0]["callback"]["task_id"] == "foreman-db1.example.com"


async def test_invalid_settings_fail_the_module_cleanly(tmp_path, key):
    rex = {"enabled": True, "ssh_identity_key_file": str(tmp_path / "missing-key")}
    dynflow = {"enabled": True, "database": f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"}
    async with smart_proxy(
        tmp_path / "proxy",
        [LogsPlugin, DynflowPlugin, ScriptPlugin],
        {"dynflow": dynflow, "remote_execution_ssh": rex, "logs": {"enabled": True}},
    ) as proxy:
        async with httpx.AsyncClient(base_url=proxy.http_url) as client:
            features = (await client.get("/v2/features")).json()
            assert features["script"]["state"] == "failed"
            assert features["dynflow"]["capabilities"] == ["single"]
            assert (await client.get("/ssh/pubkey")).status_code == 404
            failed = (await client.get("/logs")).json()["info"]["failed_modules"]
            assert "ssh-keygen" in failed["script"]
            launch = await client.post(
                "/dynflow/tasks/launch", json={"operation": "ssh", "input": batch(["h"])}
            )
            assert launch.status_code == 404
            assert launch.json() == {"error": "Unknown operation 'ssh' requested."}


def unstarted_core(key: Path) -> Core:
    """A core to register into (never started: no database is opened)."""
    return Core(CoreConfig(db_url=f"sqlite+aiosqlite:///{key.parent / 'unused.sqlite'}"))


@pytest.mark.parametrize(
    ("level", "expected"),
    [("debug", "DEBUG"), ("info", "INFO"), ("error", "ERROR"), ("fatal", "CRITICAL")],
)
def test_ssh_log_level_sets_the_ssh_library_log(key: Path, level: str, expected: str) -> None:
    import logging

    ssh_log = logging.getLogger("asyncssh")
    before = ssh_log.level
    try:
        core_plugin.register(
            unstarted_core(key), {"ssh_identity_key_file": str(key), "ssh_log_level": level}
        )
        assert logging.getLevelName(ssh_log.level) == expected
    finally:
        ssh_log.setLevel(before)


def test_the_secrets_key_is_made_beside_the_ssh_key_and_reused(key: Path) -> None:
    def registered() -> Any:
        core = unstarted_core(key)
        core_plugin.register(core, {"ssh_identity_key_file": str(key)})
        assert core.extensions.require(RexState).box is core.secret_box
        return core.secret_box

    box = registered()
    path = key.with_name("secrets.key")
    assert box.path == path
    assert path.stat().st_mode & 0o777 == 0o600
    sealed = box.seal("ssh_password", "MARKER-pw")
    assert registered().open("ssh_password", sealed) == "MARKER-pw"  # after a restart


async def test_an_unusable_secrets_key_fails_the_module_cleanly(tmp_path, key):
    secrets_key = key.with_name("secrets.key")
    secrets_key.write_text("garbage\n")
    secrets_key.chmod(0o600)
    rex = {"enabled": True, "ssh_identity_key_file": str(key)}
    dynflow = {"enabled": True, "database": f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"}
    async with smart_proxy(
        tmp_path / "proxy",
        [LogsPlugin, DynflowPlugin, ScriptPlugin],
        {"dynflow": dynflow, "remote_execution_ssh": rex, "logs": {"enabled": True}},
    ) as proxy:
        async with httpx.AsyncClient(base_url=proxy.http_url) as client:
            assert (await client.get("/v2/features")).json()["script"]["state"] == "failed"
            failed = (await client.get("/logs")).json()["info"]["failed_modules"]
            assert f"the secrets key file {secrets_key} does not hold a key" in failed["script"]
            launch = await client.post(
                "/dynflow/tasks/launch", json={"operation": "ssh", "input": batch(["h"])}
            )
            assert launch.status_code == 404
