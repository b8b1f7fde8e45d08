"""What Foreman learns when something fails for good, through the shipped processes.

* A callback Foreman **rejects** (4xx other than 408/429) is not retried: the plan pauses at
  once with its full result, which Foreman's safety-net poll (``POST /tasks/status`` every
  600 s, acting on ``stopped`` and ``paused`` plans) reads.
* A callback that cannot be delivered is retried for ``callback_retry_window`` only, then the
  plan pauses the same way (not a day of ``running``, which the poll ignores).
* A host that cannot be reached fails at once with ``exit_status`` ``"EXCEPTION"`` and "Error
  initializing command: ..." in the output, as in the original, even though the job carries
  Foreman's default ``connection_options`` (trigger retries, not SSH retries).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.services import FakeForeman, free_port

from . import harness
from .harness import Service
from .scenarios import SimulatedHosts


async def _status(service: Service, task_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        answer = await client.get(f"{service.api}/tasks/{task_id}/status")
        answer.raise_for_status()
        return answer.json()


async def _all_in(service: Service, keys: set[str], state: str, timeout: float) -> dict:
    states: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal states
        states = await harness.plan_states(service, keys)
        return all((states.get(k) or {}).get("state") == state for k in keys)

    await harness.wait_until(reached, timeout, interval=0.2)
    return states


def _runner_output(status: dict[str, Any]) -> dict[str, Any]:
    (runner,) = [a for a in status["actions"] if harness.RUNNER_CLASS_HINT in a["class"]]
    return runner["output"]


async def test_a_callback_foreman_rejects_pauses_the_plan_at_once(tmp_path: Path) -> None:
    hosts = SimulatedHosts(tmp_path, lines=2)
    foreman = FakeForeman(status=403)
    await foreman.start()
    service = Service(
        tmp_path, "core", str(tmp_path / "dynflow.sqlite"), foreman.url, env=hosts.env()
    )
    try:
        await service.start()
        keys = set(harness.new_keys(3, random.Random(1301)))
        launches = await harness.launch_batches(service, hosts.jobs(sorted(keys)))
        assert launches.acknowledged == keys
        states = await _all_in(service, keys, "paused", 30)
        assert {k: states[k]["state"] for k in keys} == dict.fromkeys(keys, "paused"), states
        assert {states[k]["result"] for k in keys} == {"error"}
        # One attempt each: Foreman said no, asking again cannot help.
        assert len(foreman.requests) == 3, len(foreman.requests)
        for key in keys:
            status = await _status(service, key)
            output = _runner_output(status)
            assert output["exit_status"] == 0
            assert "".join(r["output"] for r in output["result"]) == hosts.text
        assert service.tracebacks() == 0, service.tail(40)
    finally:
        service.close()
        await foreman.stop()


async def test_a_callback_that_cannot_be_delivered_pauses_after_the_window(
    tmp_path: Path,
) -> None:
    hosts = SimulatedHosts(tmp_path, lines=2)
    foreman = FakeForeman()  # never started: every attempt is refused
    service = Service(
        tmp_path,
        "proxy",
        str(tmp_path / "dynflow.sqlite"),
        foreman.url,
        env=hosts.env(),
        dynflow={"callback_retry_interval": 0.5, "callback_retry_window": 3},
    )
    try:
        await service.start()
        keys = set(harness.new_keys(2, random.Random(1302)))
        began = time.monotonic()
        launches = await harness.launch_batches(service, hosts.jobs(sorted(keys)))
        assert launches.acknowledged == keys
        states = await _all_in(service, keys, "paused", 20)
        took = time.monotonic() - began
        assert {k: states[k]["state"] for k in keys} == dict.fromkeys(keys, "paused"), states
        assert 3 <= took < 12, took
        for key in keys:
            output = _runner_output(await _status(service, key))
            assert output["exit_status"] == 0
            assert "".join(r["output"] for r in output["result"]) == hosts.text
        assert service.tracebacks() == 0, service.tail(40)
    finally:
        service.close()


async def test_an_unreachable_host_fails_at_once_with_exception(tmp_path: Path) -> None:
    """Foreman's default ``connection_options`` (retry_interval 15, retry_count 4) used to become
    four SSH attempts 15 s apart (45 s for a refused port, minutes for a silent host) ending in
    255; the original ignores them and reports the exception at once."""
    foreman = FakeForeman()
    await foreman.start()
    closed = free_port()  # nothing listens there
    service = Service(tmp_path, "proxy", str(tmp_path / "dynflow.sqlite"), foreman.url)
    try:
        await service.start()
        (key,) = harness.new_keys(1, random.Random(1303))
        job = harness.ssh_job(key, "127.0.0.1", closed, "root", tmp_path, "echo never\n")
        assert job["action_input"]["connection_options"]["retry_count"] == 4
        began = time.monotonic()
        launches = await harness.launch_batches(service, {key: job})
        assert launches.acknowledged == {key}

        async def called_back() -> bool:
            return bool(foreman.callbacks)

        await harness.wait_until(called_back, 30, interval=0.1)
        took = time.monotonic() - began
        assert len(foreman.callbacks) == 1, foreman.callbacks
        data = foreman.callbacks[0]["data"]
        assert data["exit_status"] == "EXCEPTION", data
        (record,) = data["result"]
        assert record["output_type"] == "debug"
        assert record["output"].startswith(
            "Error initializing command: HostUnreachable - Could not establish connection to "
            f"remote host 127.0.0.1:{closed} as root: Connection refused"
        ), record
        assert took < 5, took
        states = await _all_in(service, {key}, "stopped", 10)
        assert states[key]["result"] == "error"  # "Script execution failed"
        assert service.tracebacks() == 0, service.tail(40)
    finally:
        service.close()
        await foreman.stop()
