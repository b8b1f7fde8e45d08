"""Pull mode end to end: Foreman → Smart Proxy → MQTT → a host fetching over mutual TLS → Foreman.

Every test runs the real Smart Proxy (dynflow in-process, SQLite file) with HTTPS and client
certificates, the real mosquitto broker on 127.0.0.1:1883 (a subscriber sees what a host's
yggdrasil would), a "host" HTTP client with its own certificate (CN = its FQDN) and a fake
Foreman receiving the callbacks. Host names are unique per test, so are the MQTT topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from smart_proxy.root import LogsPlugin
from smart_proxy_dynflow.proxy_plugin import DynflowPlugin
from smart_proxy_remote_execution_ssh.actions import RunScript
from smart_proxy_remote_execution_ssh.jobs import JobIndex
from smart_proxy_remote_execution_ssh.plugin import ScriptPlugin
from smart_proxy_remote_execution_ssh.pull import PullScriptAction
from smart_proxy_remote_execution_ssh.state import RexState
from tests.support.certs import Pki, issue_client_certificate, make_pki
from tests.support.mqtt import private_broker, subscriber
from tests.support.proxy import ProxyService, smart_proxy
from tests.support.services import FakeForeman, free_port
from tests.support.waiting import wait_for, wait_plan_state

RUN_SCRIPT = "Proxy::RemoteExecution::Ssh::Actions::RunScript"
PULL_SCRIPT = "smart_proxy_remote_execution_ssh.pull.PullScriptAction"
PROXY_URL = "https://proxy.example.com:9090"
SCRIPT = "#!/bin/sh\necho hello\n"
JSON = {"content-type": "application/json"}


def new_host() -> str:
    return f"host-{uuid.uuid4().hex[:10]}.example.com"


def topic(host: str) -> str:
    return f"yggdrasil/{host}/data/in"


def job_entry(host: str, task: str, **extra: Any) -> dict[str, Any]:
    """One entry of Foreman's batch launch for a pull-mode host (§3)."""
    return {
        "action_class": RUN_SCRIPT,
        "action_input": {
            "proxy_operation_name": "ssh",
            "hostname": "192.0.2.10",
            "script": SCRIPT.replace("\n", "\r\n"),
            "ssh_user": "root",
            "effective_user": "deploy",
            "effective_user_method": "sudo",
            "secrets": {"ssh_password": None, "effective_user_password": "hunter2"},
            "alternative_names": {"fqdn": host},
            "time_to_pickup": 86400,
            "execution_timeout_interval": None,
            "proxy_url": PROXY_URL,
            "use_batch_triggering": True,
            "callback": {"task_id": task, "step_id": 3},
            **extra,
        },
    }


def v1_update(*updates: dict[str, Any]) -> dict[str, Any]:
    return {"version": "1", "updates": list(updates)}


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def output_update(stream: str, content: str) -> dict[str, Any]:
    return {"type": "output", "stream": stream, "content": content, "timestamp": now_iso()}


def exit_update(code: int) -> dict[str, Any]:
    return {"type": "exit", "exit_code": code, "timestamp": now_iso()}


async def _value(value: Any) -> Any:
    return value


@dataclass
class Pull:
    proxy: ProxyService
    pki: Pki
    foreman: FakeForeman
    client: httpx.AsyncClient
    """Foreman's client to the proxy (its certificate is a trusted host)."""

    @property
    def world(self) -> Any:
        return self.proxy.plugin("dynflow").core.world

    async def launch(self, entries: dict[str, dict[str, Any]]) -> None:
        body = {"operation": "ssh", "input": entries, "options": {}}
        response = await self.client.post("/dynflow/tasks/launch", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["parent"]["result"] == "success"
        for key in entries:
            await wait_for(lambda key=key: self.world.plan_statuses({"uuid": [key]}))

    async def launch_one(self, host: str, **extra: Any) -> tuple[str, str]:
        """Launch one host; returns (Foreman's task id, the plan id)."""
        key, task = str(uuid.uuid4()), str(uuid.uuid4())
        await self.launch({key: job_entry(host, task, **extra)})
        return task, key

    async def action(self, key: str) -> dict[str, Any]:
        """The PullScript action as ``GET /dynflow/tasks/:id/status`` shows it."""
        response = await self.client.get(f"/dynflow/tasks/{key}/status")
        assert response.status_code == 200, response.text
        return next(a for a in response.json()["actions"] if a["class"] == PULL_SCRIPT)

    async def wait_state(self, key: str, state: str) -> dict[str, Any]:
        async def reached() -> Any:
            action = await self.action(key)
            return action if action["output"].get("state") == state else None

        return await wait_for(reached)

    async def job_uuid(self, key: str) -> str:
        action = await wait_for(lambda: self._started(key))
        return str(action["input"]["job_uuid"])

    async def _started(self, key: str) -> Any:
        action = await self.action(key)
        return action if "state" in action["output"] else None

    @contextlib.asynccontextmanager
    async def host(self, cn: str) -> AsyncIterator[httpx.AsyncClient]:
        """A host's HTTPS client presenting a certificate with CN ``cn``."""
        cert, key = issue_client_certificate(self.pki, cn)
        context = self.pki.client_ssl_context(cert=cert, key=key)
        assert self.proxy.https_url is not None
        async with httpx.AsyncClient(base_url=self.proxy.https_url, verify=context) as client:
            yield client

    async def callbacks_for(self, task: str, count: int = 1) -> list[dict[str, Any]]:
        def matching() -> list[dict[str, Any]]:
            return [c for c in self.foreman.callbacks if c["callback"]["task_id"] == task]

        await wait_for(lambda: _value(len(matching()) >= count), timeout=10)
        return matching()


@contextlib.asynccontextmanager
async def pull_proxy(
    tmp_path: Path,
    foreman: FakeForeman,
    *,
    pki: Pki | None = None,
    database: Path | None = None,
    dynflow: dict[str, Any] | None = None,
    proxy_settings: dict[str, Any] | None = None,
    **rex: Any,
) -> AsyncIterator[Pull]:
    pki = pki or make_pki(tmp_path)
    settings = {
        "enabled": True,
        "mode": "pull-mqtt",
        "cockpit_integration": False,
        "mqtt_broker": "127.0.0.1",
        "mqtt_port": 1883,
        "mqtt_tls": False,  # the test broker has no TLS listener
        **rex,
    }
    dynflow_settings = {
        "enabled": True,
        "database": f"sqlite+aiosqlite:///{database or tmp_path / 'db.sqlite'}",
        **(dynflow or {}),
    }
    async with smart_proxy(
        tmp_path / f"proxy-{uuid.uuid4().hex[:6]}",
        [LogsPlugin, DynflowPlugin, ScriptPlugin],
        {"dynflow": dynflow_settings, "remote_execution_ssh": settings},
        pki=pki,
        foreman_url=foreman.url,
        trusted_hosts=[pki.client_cn],
        **(proxy_settings or {}),
    ) as proxy:
        context = pki.client_ssl_context(cert=pki.client_cert, key=pki.client_key)
        assert proxy.https_url is not None
        async with httpx.AsyncClient(base_url=proxy.https_url, verify=context) as client:
            yield Pull(proxy, pki, foreman, client)


def assert_envelope(message: dict[str, Any], job_uuid: str) -> None:
    assert set(message) == {
        "type",
        "message_id",
        "version",
        "sent",
        "directive",
        "content",
        "metadata",
    }
    assert message["type"] == "data"
    assert message["version"] == 1
    assert message["directive"] == "foreman"
    uuid.UUID(message["message_id"])
    sent = datetime.fromisoformat(message["sent"])
    assert abs((datetime.now(UTC) - sent).total_seconds()) < 30
    assert message["metadata"]["job_uuid"] == job_uuid


def assert_start_message(message: dict[str, Any], job_uuid: str, user: str | None) -> None:
    assert_envelope(message, job_uuid)
    assert message["content"] == f"{PROXY_URL}/ssh/jobs/{job_uuid}"
    assert message["metadata"] == {
        "event": "start",
        "job_uuid": job_uuid,
        "return_url": f"{PROXY_URL}/ssh/jobs/{job_uuid}/update",
        "version": "v1",
        "effective_user": user,
    }


def assert_cancel_message(message: dict[str, Any], job_uuid: str) -> None:
    assert_envelope(message, job_uuid)
    assert message["content"] == f"{PROXY_URL}/ssh/jobs/{job_uuid}/cancel"
    assert message["metadata"] == {"event": "cancel", "job_uuid": job_uuid}


# ---- the whole job -------------------------------------------------------------------------------


async def test_a_job_from_launch_to_callback_over_mqtt_and_mutual_tls(tmp_path, foreman):
    host = new_host()
    async with subscriber(topic(host)) as inbox, pull_proxy(tmp_path, foreman) as pull:
        task, key = await pull.launch_one(host)
        start = await inbox.next()
        assert start.topic == topic(host)
        job_uuid = start.payload["metadata"]["job_uuid"]
        assert_start_message(start.payload, job_uuid, "deploy")
        # The message leaves during the run step, its output is stored right after: wait.
        assert (await pull.wait_state(key, "notified"))["output"] == {
            "state": "notified",
            "result": [],
        }

        async with pull.host(host) as client:
            assert (await client.get("/ssh/jobs")).json() == [job_uuid]
            fetched = await client.get(f"/ssh/jobs/{job_uuid}")
            assert fetched.status_code == 200
            assert fetched.text == SCRIPT  # \r removed
            assert fetched.headers["x-foreman-effective-user"] == "deploy"
            await pull.wait_state(key, "delivered")
            assert (await client.get(f"/ssh/jobs/{job_uuid}/cancel")).status_code == 200

            # Output while it runs: live in the task status, in the SSH runner's shape.
            first = await client.post(
                f"/ssh/jobs/{job_uuid}/update",
                json=v1_update(output_update("stdout", "hello\n"), output_update("stderr", "!\n")),
            )
            assert first.status_code == 200 and first.content == b""
            action = await pull.wait_state(key, "running")
            assert [(r["output_type"], r["output"]) for r in action["output"]["result"]] == [
                ("stdout", "hello\n"),
                ("stderr", "!\n"),
            ]
            assert "exit_status" not in action["output"]

            last = await client.post(
                f"/ssh/jobs/{job_uuid}/update",
                json=v1_update(output_update("stdout", "bye\n"), exit_update(0)),
            )
            assert last.status_code == 200
            plan = await wait_plan_state(pull.world, key)
            assert plan.result == "success"
            # The job is gone once it ended.
            assert (await client.get("/ssh/jobs")).json() == []
            assert (await client.get(f"/ssh/jobs/{job_uuid}")).status_code == 404

        (callback,) = await pull.callbacks_for(task)
        assert callback["callback"] == {"task_id": task, "step_id": 3}
        data = callback["data"]
        assert set(data) == {"state", "result", "exit_status", "exit_status_timestamp"}
        assert data["state"] == "running"
        assert data["exit_status"] == 0
        assert isinstance(data["exit_status_timestamp"], float)
        assert [(r["output_type"], r["output"]) for r in data["result"]] == [
            ("stdout", "hello\n"),
            ("stderr", "!\n"),
            ("stdout", "bye\n"),
        ]
        for record in data["result"]:
            assert set(record) == {"output_type", "output", "timestamp"}
            assert isinstance(record["timestamp"], float)
        status = await pull.action(key)
        assert status["output"]["result"] == data["result"]
        assert "hunter2" not in str(status)
        await asyncio.sleep(0.3)
        assert len(await pull.callbacks_for(task)) == 1
        await inbox.quiet(0)
        assert len(inbox.messages) == 1


async def test_who_may_fetch(tmp_path, foreman):
    host = new_host()
    async with pull_proxy(tmp_path, foreman) as pull:
        _, key = await pull.launch_one(host)
        job_uuid = await pull.job_uuid(key)
        paths = [
            ("GET", "/ssh/jobs"),
            ("GET", f"/ssh/jobs/{job_uuid}"),
            ("GET", f"/ssh/jobs/{job_uuid}/cancel"),
            ("POST", f"/ssh/jobs/{job_uuid}/update"),
        ]
        # Another host's certificate: its own (empty) list, and no such job.
        async with pull.host(new_host()) as stranger:
            assert (await stranger.get("/ssh/jobs")).json() == []
            for method, path in paths[1:]:
                answer = await stranger.request(method, path, json=v1_update(exit_update(0)))
                assert answer.status_code == 404, path
                assert answer.json() == {"error": f"Job {job_uuid} not found"}
        # No certificate over HTTPS.
        context = pull.pki.client_ssl_context()
        assert pull.proxy.https_url is not None
        async with httpx.AsyncClient(base_url=pull.proxy.https_url, verify=context) as anonymous:
            for method, path in paths:
                answer = await anonymous.request(method, path, json={})
                assert answer.status_code == 403, path
                assert answer.json() == {"error": "No client SSL certificate supplied"}
        # Plain HTTP: refused with a clear message.
        async with httpx.AsyncClient(base_url=pull.proxy.http_url) as plain:
            for method, path in paths:
                answer = await plain.request(method, path, json={})
                assert answer.status_code == 403, path
                assert "need HTTPS with the host's client certificate" in answer.json()["error"]
        # The owner, in another case: CNs are compared without case.
        async with pull.host(host.upper()) as owner:
            assert (await owner.get("/ssh/jobs")).json() == [job_uuid]
        assert (await pull.action(key))["output"]["state"] == "notified"


async def test_legacy_payloads_bad_payloads_and_plain_pull_mode(tmp_path, foreman):
    """``mode: pull`` (no MQTT): the host polls ``GET /ssh/jobs``; legacy payloads; a bad payload
    is a 400 and the job goes on; a cancel after delivery cannot reach the host."""
    host = new_host()
    async with pull_proxy(tmp_path, foreman, mode="pull") as pull:
        consumer = str(uuid.uuid4())
        task, key = await pull.launch_one(
            host, alternative_names={"fqdn": host, "consumer_uuid": consumer}
        )
        assert (await pull.wait_state(key, "ready_for_pickup"))["output"]["result"] == []
        async with pull.host(host) as by_fqdn:  # the consumer uuid is the identity
            assert (await by_fqdn.get("/ssh/jobs")).json() == []
        async with pull.host(consumer) as client:
            (job_uuid,) = (await client.get("/ssh/jobs")).json()
            assert (await client.get(f"/ssh/jobs/{job_uuid}")).text == SCRIPT
            update = f"/ssh/jobs/{job_uuid}/update"
            bad = [
                (b"not json", "malformed JSON"),
                (b"", "empty body"),
                (b"[1, 2]", "must be a JSON object"),
                (b'{"version": "2", "updates": []}', "unsupported update version"),
                (b'{"version": "1"}', "'updates' must be an array"),
                (
                    b'{"version": "1", "updates": [{"type": "output", "stream": "stdout", '
                    b'"content": "x"}]}',
                    "'timestamp' must be an ISO 8601 time",
                ),
                (
                    b'{"version": "1", "updates": [{"type": "exit", "exit_code": 0, '
                    b'"timestamp": "yesterday"}]}',
                    "not an ISO 8601 time",
                ),
                (
                    b'{"version": "1", "updates": [{"type": "progress", '
                    b'"timestamp": "2024-01-01T00:00:00Z"}]}',
                    "unknown update type 'progress'",
                ),
                (
                    b'{"version": "1", "updates": [{"type": "output", "stream": "stdin", '
                    b'"content": "x", "timestamp": "2024-01-01T00:00:00Z"}]}',
                    "'stream'",
                ),
                (b'{"output": 5}', "'output' must be a string"),
                (b'{"output": "x", "type": "weird"}', "'type' must be one of"),
                (b'{"exit_code": "zero"}', "'exit_code' must be an integer"),
                # digits str.isdigit() takes but int() refuses: once a 500
                ('{"exit_code": "\u00b2"}'.encode(), "'exit_code' must be an integer"),
                (b'{"exit_code": "' + b"9" * 5000 + b'"}', "'exit_code' must be an integer"),
            ]
            for body, message in bad:
                answer = await client.post(update, content=body, headers=JSON)
                assert answer.status_code == 400, body
                assert message in answer.json()["error"], (body, answer.json())
            legacy = await client.post(
                update, json={"output": ["one\n", "two\n"], "type": "stdout"}
            )
            assert legacy.status_code == 200
            await client.post(update, json={"output": "err\n", "type": "stderr"})

            # Cancel after delivery: without MQTT the host cannot be told.
            cancelled = await pull.client.post(f"/dynflow/tasks/{key}/cancel")
            assert cancelled.json() == {"task_id": key, "canceled_steps_count": 1}

            async def cancel_noted() -> Any:
                records = (await pull.action(key))["output"]["result"]
                return records if len(records) == 4 else None

            records = await wait_for(cancel_noted)
            assert records[3]["output_type"] == "debug"
            assert records[3]["output"] == (
                "The job was cancelled by the user, however the job was triggered without "
                "MQTT and cannot be stopped\n"
            )
            assert (await client.post(update, json={"exit_code": "3"})).status_code == 200
        plan = await wait_plan_state(pull.world, key)
        assert plan.result == "error"  # Script execution failed
        (callback,) = await pull.callbacks_for(task)
        data = callback["data"]
        assert data["exit_status"] == 3
        assert data["state"] == "running"
        assert [(r["output_type"], r["output"]) for r in data["result"]] == [
            ("stdout", "one\n"),
            ("stdout", "two\n"),
            ("stderr", "err\n"),
            ("debug", records[3]["output"]),
        ]


# ---- timeouts and cancel -------------------------------------------------------------------------


async def test_pickup_timeout(tmp_path, foreman):
    host = new_host()
    async with pull_proxy(tmp_path, foreman, mode="pull") as pull:
        task, key = await pull.launch_one(host, time_to_pickup=0.5)
        job_uuid = await pull.job_uuid(key)
        (callback,) = await pull.callbacks_for(task)
        assert callback["data"]["exit_status"] == "EXCEPTION"
        assert callback["data"]["state"] == "ready_for_pickup"
        assert [(r["output_type"], r["output"]) for r in callback["data"]["result"]] == [
            ("debug", "The job was not picked up in time\n")
        ]
        async with pull.host(host) as client:
            assert (await client.get(f"/ssh/jobs/{job_uuid}")).status_code == 404


async def test_pickup_timeout_after_delivery_is_ignored_then_execution_timeout(tmp_path, foreman):
    """A fetched job outlives its pickup timeout; its execution timeout sends an MQTT cancel
    message and waits for the host's exit report."""
    host = new_host()
    async with subscriber(topic(host)) as inbox, pull_proxy(tmp_path, foreman) as pull:
        task, key = await pull.launch_one(host, time_to_pickup=0.3, execution_timeout_interval=1.0)
        job_uuid = (await inbox.next()).payload["metadata"]["job_uuid"]
        async with pull.host(host) as client:
            assert (await client.get(f"/ssh/jobs/{job_uuid}")).status_code == 200
            await pull.wait_state(key, "delivered")
            cancel = await inbox.next(timeout=5)
            assert_cancel_message(cancel.payload, job_uuid)
            action = await pull.action(key)
            assert [r["output"] for r in action["output"]["result"]] == [
                "Execution timeout exceeded, notifying the host over MQTT\n"
            ]
            assert (await client.get(f"/ssh/jobs/{job_uuid}/cancel")).status_code == 200
            await client.post(f"/ssh/jobs/{job_uuid}/update", json=v1_update(exit_update(143)))
        (callback,) = await pull.callbacks_for(task)
        assert callback["data"]["exit_status"] == 143
        assert callback["data"]["state"] == "running"  # the host reported (its exit)


async def test_cancel_before_pickup(tmp_path, foreman):
    host = new_host()
    async with subscriber(topic(host)) as inbox, pull_proxy(tmp_path, foreman) as pull:
        task, key = await pull.launch_one(host)
        job_uuid = (await inbox.next()).payload["metadata"]["job_uuid"]
        answer = await pull.client.post(f"/dynflow/tasks/{key}/cancel")
        assert answer.json()["canceled_steps_count"] == 1
        (callback,) = await pull.callbacks_for(task)
        assert callback["data"]["exit_status"] == "EXCEPTION"
        assert [r["output"] for r in callback["data"]["result"]] == [
            "The job was cancelled by the user\n"
        ]
        async with pull.host(host) as client:
            assert (await client.get(f"/ssh/jobs/{job_uuid}")).status_code == 404
            assert (await client.get(f"/ssh/jobs/{job_uuid}/cancel")).status_code == 404
        await inbox.quiet(0.3)  # no cancel message: the host never had the job
        assert len(inbox.messages) == 1


async def test_cancel_after_delivery_notifies_the_host(tmp_path, foreman):
    host = new_host()
    async with subscriber(topic(host)) as inbox, pull_proxy(tmp_path, foreman) as pull:
        task, key = await pull.launch_one(host)
        job_uuid = (await inbox.next()).payload["metadata"]["job_uuid"]
        async with pull.host(host) as client:
            await client.get(f"/ssh/jobs/{job_uuid}")
            await client.post(
                f"/ssh/jobs/{job_uuid}/update", json=v1_update(output_update("stdout", "working\n"))
            )
            await pull.wait_state(key, "running")
            await pull.client.post(f"/dynflow/tasks/{key}/cancel")
            cancel = await inbox.next()
            assert cancel.topic == topic(host)
            assert_cancel_message(cancel.payload, job_uuid)
            assert cancel.payload["message_id"] != inbox.messages[0].payload["message_id"]
            assert (await client.get(f"/ssh/jobs/{job_uuid}/cancel")).status_code == 200
            await client.post(f"/ssh/jobs/{job_uuid}/update", json=v1_update(exit_update(130)))
        (callback,) = await pull.callbacks_for(task)
        assert callback["data"]["exit_status"] == 130
        assert [r["output"] for r in callback["data"]["result"]] == [
            "working\n",
            "The job was cancelled by the user, notifying the host over MQTT\n",
        ]


# ---- the dispatcher: rate limit and resend -------------------------------------------------------


async def test_rate_limit_ttl_and_resend(tmp_path, foreman):
    """One job in flight at a time: an unanswered notification holds the slot for one or two
    ticks, is sent again after ``mqtt_resend_interval``; a fetched job holds it until done."""
    ttl, resend = 0.3, 0.6
    first_host, second_host = new_host(), new_host()
    async with (
        subscriber(topic(first_host), topic(second_host)) as inbox,
        pull_proxy(
            tmp_path, foreman, mqtt_rate_limit=1, mqtt_ttl=ttl, mqtt_resend_interval=resend
        ) as pull,
    ):
        keys = {host: str(uuid.uuid4()) for host in (first_host, second_host)}
        tasks = {host: str(uuid.uuid4()) for host in keys}
        await pull.launch({keys[h]: job_entry(h, tasks[h]) for h in keys})
        a = await inbox.next()
        b = await inbox.next(timeout=3)
        assert {a.topic, b.topic} == {topic(first_host), topic(second_host)}
        # The second waited until the first's notification went cold and left its slot.
        assert ttl * 0.8 <= b.at - a.at <= 2 * ttl + 0.5, b.at - a.at
        again = await inbox.next(timeout=3)
        assert again.topic == a.topic
        assert again.payload == a.payload  # the stored notification, sent again
        assert resend + ttl * 0.8 <= again.at - a.at <= resend + 2 * ttl + 0.6, again.at - a.at

        # The first host fetches its job: it holds the only slot until it is done.
        first = first_host if a.topic == topic(first_host) else second_host
        second = second_host if first == first_host else first_host
        job_uuid = a.payload["metadata"]["job_uuid"]
        async with pull.host(first) as client:
            assert (await client.get(f"/ssh/jobs/{job_uuid}")).status_code == 200
            # The second's resend falls due meanwhile (two ticks after it was sent, plus the
            # resend interval), but the slot is taken.
            await inbox.quiet(resend + 2 * ttl + 0.3)
            await client.post(f"/ssh/jobs/{job_uuid}/update", json=v1_update(exit_update(0)))
        await pull.callbacks_for(tasks[first])
        resent = await inbox.next(timeout=2)  # the slot is free: the second goes out again
        assert resent.topic == topic(second)
        assert resent.payload == b.payload
        # Every notification went over one connection to the broker.
        mqtt = pull.proxy.plugin("dynflow").core.extensions.require(RexState).mqtt
        assert mqtt.connection.connects == 1


async def test_a_broker_that_is_down_does_not_fail_the_job(tmp_path, foreman):
    host = new_host()
    async with pull_proxy(tmp_path, foreman, mqtt_port=free_port(), mqtt_ttl=0.2) as pull:
        task, key = await pull.launch_one(host)
        assert (await pull.wait_state(key, "notified"))["output"]["result"] == []
        async with pull.host(host) as client:
            (job_uuid,) = (await client.get("/ssh/jobs")).json()
            assert (await client.get(f"/ssh/jobs/{job_uuid}")).status_code == 200
            await client.post(
                f"/ssh/jobs/{job_uuid}/update",
                json=v1_update(output_update("stdout", "ok\n"), exit_update(0)),
            )
        (callback,) = await pull.callbacks_for(task)
        assert callback["data"]["exit_status"] == 0


async def test_notifications_over_mutual_tls(tmp_path, foreman):
    """``mqtt_tls`` unset and the proxy's TLS files complete: the broker is reached over TLS
    with the proxy's client certificate (``foreman_ssl_*``) and verified against its CA."""
    host = new_host()
    pki = make_pki(tmp_path)
    proxy_settings = {
        "foreman_ssl_ca": pki.ca_cert,
        "foreman_ssl_cert": pki.client_cert,
        "foreman_ssl_key": pki.client_key,
    }
    async with (
        private_broker(pki, tmp_path / "broker") as broker,
        subscriber(topic(host), port=broker.port) as inbox,
        pull_proxy(
            tmp_path,
            foreman,
            pki=pki,
            proxy_settings=proxy_settings,
            mqtt_port=broker.tls_port,
            mqtt_tls=None,
        ) as pull,
    ):
        dispatcher = pull.proxy.plugin("dynflow").core.extensions.require(RexState).mqtt
        assert dispatcher.config.tls is True
        _, key = await pull.launch_one(host)
        start = await inbox.next()
        assert_start_message(start.payload, await pull.job_uuid(key), "deploy")
        assert dispatcher.connection.connects == 1


async def test_one_connection_reconnected_after_the_broker_restarts(tmp_path, foreman):
    first, second = new_host(), new_host()
    pki = make_pki(tmp_path)
    async with (
        private_broker(pki, tmp_path / "broker") as broker,
        pull_proxy(tmp_path, foreman, pki=pki, mqtt_port=broker.port) as pull,
    ):
        dispatcher = pull.proxy.plugin("dynflow").core.extensions.require(RexState).mqtt
        async with subscriber(topic(first), port=broker.port) as inbox:
            await pull.launch_one(first)
            assert (await inbox.next()).topic == topic(first)
        assert dispatcher.connection.connects == 1
        broker.stop()
        await broker.start()
        async with subscriber(topic(second), port=broker.port) as inbox:
            _, key = await pull.launch_one(second)
            start = await inbox.next()
            assert_start_message(start.payload, await pull.job_uuid(key), "deploy")
        assert dispatcher.connection.connects == 2


# ---- restarts ------------------------------------------------------------------------------------


async def test_jobs_survive_a_restart_of_the_proxy(tmp_path, foreman):
    """The original lost every pull job on restart; here a host fetching after the restart gets
    its job, its updates reach the action, and a job fetched before the restart goes on."""
    waiting, fetched = new_host(), new_host()
    pki = make_pki(tmp_path)
    database = tmp_path / "restart.sqlite"
    async with subscriber(topic(waiting), topic(fetched)) as inbox:
        async with pull_proxy(tmp_path, foreman, pki=pki, database=database) as pull:
            keys = {host: str(uuid.uuid4()) for host in (waiting, fetched)}
            tasks = {host: str(uuid.uuid4()) for host in keys}
            await pull.launch({keys[h]: job_entry(h, tasks[h]) for h in keys})
            first = {m.topic: m.payload for m in [await inbox.next(), await inbox.next()]}
            uuids = {h: first[topic(h)]["metadata"]["job_uuid"] for h in keys}
            async with pull.host(fetched) as client:
                assert (await client.get(f"/ssh/jobs/{uuids[fetched]}")).status_code == 200
                await client.post(
                    f"/ssh/jobs/{uuids[fetched]}/update",
                    json=v1_update(output_update("stdout", "before\n")),
                )
                await pull.wait_state(keys[fetched], "running")
        assert foreman.callbacks == []

        async with pull_proxy(tmp_path, foreman, pki=pki, database=database) as pull:
            # The job nobody fetched is announced again; the fetched one is not.
            again = await inbox.next(timeout=5)
            assert again.topic == topic(waiting)
            assert_start_message(again.payload, uuids[waiting], "deploy")
            async with pull.host(waiting) as client:
                assert (await client.get("/ssh/jobs")).json() == [uuids[waiting]]
                fetched_script = await client.get(f"/ssh/jobs/{uuids[waiting]}")
                assert fetched_script.text == SCRIPT
                await client.post(
                    f"/ssh/jobs/{uuids[waiting]}/update",
                    json=v1_update(output_update("stdout", "after\n"), exit_update(0)),
                )
            async with pull.host(fetched) as client:
                assert (await client.get("/ssh/jobs")).json() == [uuids[fetched]]
                await client.post(
                    f"/ssh/jobs/{uuids[fetched]}/update",
                    json=v1_update(output_update("stdout", "still here\n"), exit_update(2)),
                )
            (late,) = await pull.callbacks_for(tasks[waiting])
            assert late["data"]["exit_status"] == 0
            assert [r["output"] for r in late["data"]["result"]] == ["after\n"]
            (running,) = await pull.callbacks_for(tasks[fetched])
            assert running["data"]["exit_status"] == 2
            assert [r["output"] for r in running["data"]["result"]] == ["before\n", "still here\n"]
            await inbox.quiet(0.2)
            assert len(inbox.messages) == 3

            # What made the job available at once: the index is rebuilt from the actions.
            world = pull.world
            index = JobIndex()
            labels = (RunScript.name(), PullScriptAction.name())
            assert await index.rebuild(world, labels, PullScriptAction) == 0  # both ended

    async with pull_proxy(tmp_path, foreman, pki=pki, database=database) as pull:
        host = new_host()
        _, key = await pull.launch_one(host)
        job_uuid = await pull.job_uuid(key)
        index = JobIndex()
        assert await index.rebuild(pull.world, labels, PullScriptAction) == 1
        job = index.find(job_uuid, host)
        assert job is not None and job.script == SCRIPT and job.effective_user == "deploy"
        assert index.uuids_of(host) == [job_uuid]


# ---- deployments ---------------------------------------------------------------------------------


async def test_relay_mode_answers_501(tmp_path, foreman):
    dynflow = {"external_core": True, "core_url": f"http://127.0.0.1:{free_port()}"}
    async with pull_proxy(tmp_path, foreman, mode="pull", dynflow=dynflow) as pull:
        async with pull.host(new_host()) as client:
            answer = await client.get("/ssh/jobs")
        assert answer.status_code == 501
        assert "external smart-proxy-dynflow-core" in answer.json()["error"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mode": "pull-mqtt", "mqtt_broker": None}, "'mqtt_broker' is required"),
        ({"mode": "pull-mqtt", "mqtt_broker": "127.0.0.1", "mqtt_tls": True}, "mqtt_tls is true"),
    ],
)
async def test_bad_pull_settings_fail_the_plugin_cleanly(tmp_path, foreman, settings, message):
    rex = {"enabled": True, "cockpit_integration": False, "mqtt_port": 1883, **settings}
    dynflow = {"enabled": True, "database": f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"}
    async with smart_proxy(
        tmp_path / "proxy",
        [LogsPlugin, DynflowPlugin, ScriptPlugin],
        {"dynflow": dynflow, "remote_execution_ssh": rex, "logs": {"enabled": True}},
        foreman_url=foreman.url,
    ) as proxy:
        async with httpx.AsyncClient(base_url=proxy.http_url) as client:
            features = (await client.get("/v2/features")).json()
            assert features["script"]["state"] == "failed"
            failed = (await client.get("/logs")).json()["info"]["failed_modules"]
            assert message in failed["script"]
            assert (await client.get("/ssh/jobs")).status_code == 404


async def test_pull_jobs_do_not_store_the_passwords(tmp_path, foreman):
    """The host runs the job itself: the SSH and sudo passwords are never stored (the batch
    parent's sealed copy is erased once the child is planned)."""
    host = new_host()
    markers = ("MARKER-pull-ssh-9d1", "MARKER-pull-sudo-9d1")
    database = tmp_path / "db.sqlite"
    async with pull_proxy(tmp_path, foreman, mode="pull", database=database) as pull:
        secrets = {"ssh_password": markers[0], "effective_user_password": markers[1]}
        task, key = await pull.launch_one(host, secrets=secrets)
        action = await pull.wait_state(key, "ready_for_pickup")
        assert action["input"]["secrets"] == "[FILTERED]"
        plan = await pull.world.load_plan(key)
        pull_action = next(a for a in plan.actions.values() if a.name() == PULL_SCRIPT)
        assert pull_action.input["secrets"] == {
            "ssh_password": None,
            "effective_user_password": None,
        }
        async with pull.host(host) as client:
            (job_uuid,) = (await client.get("/ssh/jobs")).json()
            fetched = await client.get(f"/ssh/jobs/{job_uuid}")
            assert fetched.text == SCRIPT
            update = v1_update(exit_update(0))
            done = await client.post(f"/ssh/jobs/{job_uuid}/update", json=update)
            assert done.status_code == 200
        assert (await wait_plan_state(pull.world, key)).result == "success"
        await pull.callbacks_for(task)
        for path in tmp_path.glob("db.sqlite*"):
            data = path.read_bytes()
            assert not any(marker.encode() in data for marker in markers), path
        bodies = b"".join(request["body"] for request in foreman.requests)
        assert not any(marker.encode() in bodies for marker in markers)
