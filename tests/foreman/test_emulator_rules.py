"""The emulator's Foreman rules, against a scripted fake proxy (no real proxy here).

Each rule is foreman-tasks' or REX's, as tests/foreman/emulator.py cites them: what a batch
launch sends and how its answer is read, the safety-net poll (``null`` ids, missing tasks, an
error answer = every task missing, stopped tasks read and concluded), the callback controller
(single, bulk, ``data: null``), output de-duplication, cancel twice, and the re-sent launch of
the non-batch path. The end-to-end runs against the shipped proxy are test_emulator_jobs.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.foreman import emulator as fm
from tests.foreman.emulator import ForemanEmulator, SmartProxy
from tests.support.services import Served, start_app


def output(lines: list[str], exit_status: Any = 0, ids: bool = False) -> dict[str, Any]:
    now = time.time()
    result = []
    for index, line in enumerate(lines):
        record: dict[str, Any] = {"output_type": "stdout", "output": line, "timestamp": now + index}
        if ids:
            record["id"] = f"r{index}"
        result.append(record)
    data: dict[str, Any] = {"result": result, "runner_id": "r"}
    if exit_status is not None:
        data["exit_status"] = exit_status
        data["exit_status_timestamp"] = now + len(lines)
    return data


@dataclass
class FakeProxy:
    """Answers as scripted; records the bodies it got."""

    launch: Callable[[dict[str, Any]], tuple[int, Any]] = lambda body: (
        200,
        {"parent": {"result": "success", "task_id": "parent-1"}},
    )
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    status_code: int = 200
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """key -> output of the runner action whose input.task_id is the Foreman task id."""
    task_ids: dict[str, str] = field(default_factory=dict)  # key -> Foreman task id
    bodies: list[tuple[str, Any]] = field(default_factory=list)
    served: Served | None = None

    def app(self) -> Starlette:
        async def launch(request: Request) -> Response:
            body = await request.json()
            self.bodies.append(("launch", body))
            for key, entry in body["input"].items():
                self.task_ids[key] = entry["action_input"]["callback"]["task_id"]
            status, answer = self.launch(body)
            return JSONResponse(answer, status_code=status)

        async def status(request: Request) -> Response:
            body = await request.json()
            self.bodies.append(("status", body))
            if self.status_code != 200:
                return JSONResponse({"error": "nope"}, status_code=self.status_code)
            ids = body["task_ids"]
            return JSONResponse({i: self.states[i] for i in ids if i in self.states})

        async def task_status(request: Request) -> Response:
            key = request.path_params["id"]
            if key not in self.states:
                return JSONResponse({}, status_code=404)
            actions = [
                {"class": "RunScript", "input": {"hostname": "h"}, "output": {}},
                {
                    "class": "ScriptRunner",
                    "input": {"task_id": self.task_ids.get(key)},
                    "output": self.outputs.get(key, {}),
                },
            ]
            return JSONResponse({**self.states[key], "id": key, "actions": actions})

        async def cancel(request: Request) -> Response:
            self.bodies.append(("cancel", (await request.body()).decode()))
            key = request.path_params["id"]
            return JSONResponse({"task_id": key, "canceled_steps_count": 1})

        async def count(request: Request) -> Response:
            return JSONResponse({"count": 0, "state": request.query_params.get("state")})

        return Starlette(
            routes=[
                Route("/dynflow/tasks/launch", launch, methods=["POST"]),
                Route("/dynflow/tasks/status", status, methods=["POST"]),
                Route("/dynflow/tasks/count", count, methods=["GET"]),
                Route("/dynflow/tasks/{id}/status", task_status, methods=["GET"]),
                Route("/dynflow/tasks/{id}/cancel", cancel, methods=["POST"]),
            ]
        )

    @property
    def url(self) -> str:
        assert self.served is not None
        return self.served.url


@pytest.fixture
async def fake() -> AsyncIterator[FakeProxy]:
    proxy = FakeProxy()
    proxy.served = await start_app(proxy.app())
    try:
        yield proxy
    finally:
        await proxy.served.stop()


@pytest.fixture
async def foreman() -> AsyncIterator[ForemanEmulator]:
    async with ForemanEmulator(poll_interval=3600, retry_interval=0.05) as emulator:
        yield emulator


async def callback(emulator: ForemanEmulator, body: Any, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=emulator.url) as client:
        return await client.post(fm.CALLBACK_PATH, json=body, **kw)


async def launched(job: fm.Job) -> None:
    async def all_triggered() -> bool:
        return all(h.remote_state not in (None, "new") for h in job.hosts)

    deadline = time.monotonic() + 10
    while not await all_triggered():
        assert time.monotonic() < deadline, [h.remote_state for h in job.hosts]
        await asyncio.sleep(0.01)


async def test_batch_launch_shape_and_parent_answer(
    fake: FakeProxy, foreman: ForemanEmulator
) -> None:
    job = await foreman.start_job(fake.url, [f"h{i}" for i in range(250)], "uptime")
    await launched(job)
    launches = foreman.requests_to("/dynflow/tasks/launch")
    assert [len(r.body["input"]) for r in launches] == [100, 100, 50]
    first = launches[0]
    assert list(first.body) == ["input", "operation", "options"]
    assert first.body["operation"] == "ssh" and first.body["options"] == {}
    assert first.headers["Content-Type"] == "application/json"
    assert first.headers["Accept"] == "application/json"
    assert first.headers["X-Request-Id"] == job.request_id
    entry = first.body["input"][job.hosts[0].key]
    assert list(entry) == ["action_input", "action_class"]
    assert entry["action_class"] == fm.RUN_SCRIPT
    action_input = entry["action_input"]
    assert action_input["callback"] == {"task_id": job.hosts[0].task_id, "step_id": 3}
    assert list(action_input)[-4:] == [
        "proxy_url",
        "proxy_action_name",
        "current_request_id",
        "callback",
    ]
    assert action_input["hostname"] == "h0" and action_input["script"] == "uptime"
    # {"parent": ...}: every task is parent-triggered, remote id = its own key
    assert {h.remote_state for h in job.hosts} == {"parent-triggered"}
    assert {h.parent_task_id for h in job.hosts} == {"parent-1"}
    assert all(h.remote_task_id == h.key for h in job.hosts)
    # one proxy selection per planning round of 100
    assert len(foreman.requests_to("/dynflow/tasks/count")) == 3


async def test_poll_error_answer_makes_every_task_missing(
    fake: FakeProxy, foreman: ForemanEmulator
) -> None:
    fake.status_code = 422
    job = await foreman.start_job(fake.url, ["a", "b", "c"])
    await launched(job)
    round_ = await foreman.poll_once(job)
    assert round_.requests == [[h.key for h in job.hosts] + ["parent-1"]]
    assert len(round_.failed) == 1 and "422" in round_.failed[0], round_.failed
    result = await job.wait(5)
    assert result.summary() == {("error", "poll"): 3}
    assert {h.error for h in result} == {fm.MISSING}


async def test_poll_rules_parent_running_missing_stopped(
    fake: FakeProxy, foreman: ForemanEmulator
) -> None:
    job = await foreman.start_job(fake.url, ["absent", "running", "stopped", "paused"])
    await launched(job)
    absent, running, stopped, paused = job.hosts
    fake.states = {
        "parent-1": {"state": "running", "result": "pending"},
        running.key: {"state": "running", "result": "pending"},
        stopped.key: {"state": "stopped", "result": "success"},
        paused.key: {"state": "paused", "result": "error"},
    }
    fake.outputs = {stopped.key: output(["one\n", "two\n"]), paused.key: output(["x\n"], 7)}
    await foreman.poll_once(job)
    # absent while the parent runs: still pending (children are being planned)
    assert absent.outcome is None and running.outcome is None
    assert stopped.outcome is not None and paused.outcome is not None
    assert (stopped.outcome.result, stopped.outcome.concluded_by) == ("success", "poll")
    assert stopped.outcome.stdout == "one\ntwo\n" and stopped.outcome.exit_status == 0
    assert (paused.outcome.result, paused.outcome.error) == ("error", fm.JOB_FAILED)
    # the parent stopped: the absent one is missing now
    fake.states["parent-1"] = {"state": "stopped", "result": "success"}
    round_ = await foreman.poll_once(job)
    assert round_.requests == [[absent.key, running.key, "parent-1"]]
    assert absent.outcome is not None and absent.outcome.error == fm.MISSING
    assert running.outcome is None


async def test_poll_sends_null_for_tasks_without_parent(
    fake: FakeProxy, foreman: ForemanEmulator
) -> None:
    # An old proxy (<= 0.6) answers per key: tasks are "triggered", with no parent.
    fake.launch = lambda body: (
        200,
        {key: {"result": "success", "task_id": key} for key in body["input"]},
    )
    job = await foreman.start_job(fake.url, ["a", "b"])
    await launched(job)
    assert {h.remote_state for h in job.hosts} == {"triggered"}
    round_ = await foreman.poll_once(job)
    assert round_.requests == [[job.hosts[0].key, job.hosts[1].key, None]]
    assert fake.bodies[-1] == ("status", {"task_ids": [job.hosts[0].key, job.hosts[1].key, None]})


async def test_failed_launch_fails_its_batch_only(
    fake: FakeProxy, foreman: ForemanEmulator
) -> None:
    calls = []

    def launch(body: dict[str, Any]) -> tuple[int, Any]:
        calls.append(len(body["input"]))
        if len(calls) == 1:
            return 409, {"error": "tasks with these ids exist already"}
        return 200, {"parent": {"result": "success", "task_id": "parent-2"}}

    fake.launch = launch
    job = await foreman.start_job(fake.url, [f"h{i}" for i in range(5)], batch_size=3)
    await launched(job)
    failed = [h for h in job.hosts if h.outcome is not None]
    assert [h.hostname for h in failed] == ["h0", "h1", "h2"]
    assert {h.outcome.error for h in failed if h.outcome} == {fm.TRIGGER_FAILED + "409 Conflict"}
    assert {h.outcome.concluded_by for h in failed if h.outcome} == {"trigger"}
    assert [h.remote_state for h in job.hosts[3:]] == ["parent-triggered"] * 2


async def test_callback_controller(fake: FakeProxy, foreman: ForemanEmulator) -> None:
    job = await foreman.start_job(fake.url, ["a", "b", "c"])
    await launched(job)
    a, b, c = job.hosts
    single = {"callback": {"task_id": a.task_id, "step_id": 3}, "data": output(["hi\n"])}
    answer = await callback(foreman, single)
    assert (answer.status_code, answer.json()) == (200, {"message": "processing"})
    # bulk: the entry before the null data is delivered, the request fails with 500
    bulk = {
        "callbacks": [
            {"callback": {"task_id": b.task_id, "step_id": "3"}, "data": output(["b\n"], 1)},
            {"callback": {"task_id": c.task_id, "step_id": 3}, "data": None},
        ]
    }
    answer = await callback(foreman, bulk)
    assert answer.status_code == 500
    assert [e.task_id for e in foreman.callback_requests[-1].entries] == [b.task_id]
    result_a = await a.done.wait()
    assert result_a and a.outcome is not None and a.outcome.result == "success"
    await b.done.wait()
    assert b.outcome is not None and (b.outcome.result, b.outcome.exit_status) == ("error", 1)
    assert c.outcome is None
    # sent again: 200, dropped by the finished step
    assert (await callback(foreman, single)).status_code == 200
    unknown = {"callback": {"task_id": str(uuid.uuid4()), "step_id": 3}, "data": {}}
    assert (await callback(foreman, unknown)).status_code == 200
    assert foreman.callback_requests[-1].entries[0].delivery == "unknown task"
    wrong_type = await callback(foreman, single, headers={"Content-Type": "text/plain"})
    assert wrong_type.status_code == 500
    # data without a result list: REX's process_proxy_data raises, the host fails
    bad = {"callback": {"task_id": c.task_id, "step_id": 3}, "data": {"exit_status": 0}}
    assert (await callback(foreman, bad)).status_code == 200
    await c.done.wait()
    assert c.outcome is not None and c.outcome.result == "error"
    assert "each_with_index" in (c.outcome.error or "")


async def test_output_events_deduplicated_by_id_then_index() -> None:
    host = fm.HostTask(0, "h", "k", "t", 3, {}, SmartProxy("http://x"))
    first = output(["a\n", "b\n"], exit_status=None, ids=True)
    ForemanEmulator.process_proxy_data(host, first)
    later = output(["a\n", "b\n", "c\n"], exit_status=0, ids=True)
    ForemanEmulator.process_proxy_data(host, later)
    assert [e["event"] for e in host.sorted_events()] == ["a\n", "b\n", "c\n"]
    assert host.exit_status() == 0
    # by index: a later, different list at the same positions keeps the first events
    other = fm.HostTask(0, "h", "k", "t", 3, {}, SmartProxy("http://x"))
    ForemanEmulator.process_proxy_data(other, output(["x\n"], exit_status=None))
    ForemanEmulator.process_proxy_data(other, output(["y\n", "z\n"], exit_status="EXCEPTION"))
    assert [e["event"] for e in other.sorted_events()] == ["x\n", "z\n"]
    assert fm.ruby_to_s(other.exit_status()) != "0"


async def test_cancel_twice_is_enforced_and_cancel_then_exit_is_cancelled(
    fake: FakeProxy, foreman: ForemanEmulator
) -> None:
    job = await foreman.start_job(fake.url, ["once", "twice", "aborted"])
    await launched(job)
    once, twice, aborted = job.hosts
    await foreman.cancel(job, "once", "twice")
    assert [b for b in fake.bodies if b[0] == "cancel"] == [("cancel", ""), ("cancel", "")]
    assert once.output["cancel_sent"] and once.outcome is None
    await foreman.cancel(job, "twice")
    assert twice.outcome is not None
    assert (twice.outcome.result, twice.outcome.error) == ("cancelled", fm.CANCEL_ENFORCED)
    data = {"callback": {"task_id": once.task_id, "step_id": 3}, "data": output([], 143)}
    await callback(foreman, data)
    await once.done.wait()
    assert once.outcome is not None
    assert (once.outcome.result, once.outcome.error) == ("cancelled", fm.TASK_CANCELLED)
    await foreman.abort(job, "aborted")
    assert aborted.outcome is not None and aborted.outcome.error == fm.ABORTED
    assert len([b for b in fake.bodies if b[0] == "cancel"]) == 3


async def test_non_batch_trigger_resends_a_launch_whose_answer_was_lost(
    fake: FakeProxy, foreman: ForemanEmulator
) -> None:
    foreman.lost_answers["launch"] = 1
    job = await foreman.start_job(fake.url, ["solo"], batch_triggering=False)
    await launched(job)
    (host,) = job.hosts
    launches = [body for kind, body in fake.bodies if kind == "launch"]
    assert len(launches) == 2 and launches[0] == launches[1]
    assert list(launches[0]["input"]) == [host.key]
    assert host.failed_proxy_tasks()[0]["exception_message"] == (
        "Timed out reading data from server"
    )
    assert host.action_input["connection_options"]["proxy_batch_triggering"] is False
    assert host.remote_state == "parent-triggered" and host.outcome is None


async def test_non_batch_trigger_gives_up_after_retry_count(
    fake: FakeProxy, foreman: ForemanEmulator
) -> None:
    fake.launch = lambda body: (500, {"error": "broken"})
    result = await foreman.run_job(fake.url, ["h"], batch_triggering=False, timeout=10)
    (host,) = result
    assert (host.result, host.concluded_by, host.error) == (
        "error",
        "trigger",
        "500 Internal Server Error",
    )
    assert len(foreman.requests_to("/dynflow/tasks/launch")) == fm.RETRY_COUNT


async def test_an_offline_proxy_fails_planning(foreman: ForemanEmulator) -> None:
    closed = SmartProxy("http://127.0.0.1:9")  # nothing listens on the discard port
    result = await foreman.run_job(closed, ["h"], timeout=10)
    (host,) = result
    # the count request of the proxy selection fails: the host's planning fails
    assert (host.result, host.concluded_by) == ("error", "planning")
    assert host.error == fm.PROXY_DOWN.format(name="127.0.0.1")
    assert foreman.requests_to("/launch") == []
