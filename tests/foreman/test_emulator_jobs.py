"""Jobs end to end: the Foreman emulator (tests/foreman/emulator.py) against the shipped process.

``smart-proxy`` (the dynflow and script plugins in-process, the task API under ``/dynflow``) or
``smart-proxy-dynflow-core`` (the task API at its root), started by
``tests/reliability/harness.py``'s :class:`Service`, with simulated hosts (``REX_SIMULATE``:
every host prints the lines of a file, one per runner refresh, and exits 0) or real sshd
hosts. What is asserted is what Foreman concludes per host (``RunHostJob``: success / error /
cancelled, exit status, output) and what it had to do to get there (launch batches, callbacks,
polls). Every wait is a condition (``Job.wait``), no fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.foreman import emulator as fm
from tests.foreman.emulator import ForemanEmulator, Job, SmartProxy
from tests.reliability.harness import Service
from tests.smart_proxy_remote_execution_ssh.conftest import (  # noqa: F401
    closed_port,
    ssh_keys,
    ssh_users,
    sshd,
)
from tests.support import sshd as sshd_support
from tests.support.sshd import Sshd, SshKeys, TestUsers

REFRESH = 0.25
"""``runner_refresh_interval`` of the service: a simulated host prints one line per refresh."""


def simulated_text(lines: int) -> str:
    return "".join(f"simulated line {i}\n" for i in range(lines))


@contextlib.asynccontextmanager
async def shipped(
    workdir: Path,
    foreman: ForemanEmulator,
    *,
    kind: str = "proxy",
    lines: int | None = 2,
    rex: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[Service, SmartProxy]]:
    """The shipped service talking to ``foreman``; simulated hosts printing ``lines`` lines
    (``lines=None``: real hosts)."""
    env: dict[str, str] = {}
    if lines is not None:
        path = workdir / "simulated.txt"
        path.write_text(simulated_text(lines))
        env = {"REX_SIMULATE": "1", "REX_SIMULATE_PATH": str(path)}
    service = Service(
        workdir,
        kind,
        str(workdir / "dynflow.sqlite"),
        foreman.url,
        env=env,
        rex={"runner_refresh_interval": REFRESH, **(rex or {})},
    )
    await service.start()
    try:
        yield service, SmartProxy(service.url, service.api)
    finally:
        service.close()


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def delivered(foreman: ForemanEmulator) -> Counter[str]:
    """Callback entries Foreman delivered to a step, per Foreman task id."""
    return Counter(
        e.task_id for r in foreman.callback_requests for e in r.entries if e.delivery == "delivered"
    )


async def poll_until_done(foreman: ForemanEmulator, job: Job, timeout: float, every: float) -> None:
    """Foreman's safety-net poll, every ``every`` seconds (its 600 s, scaled) until the job
    is concluded (callbacks may conclude hosts meanwhile)."""
    deadline = time.monotonic() + timeout
    while not job.done and time.monotonic() < deadline:
        await foreman.poll_once(job)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(job.finished.wait(), every)


# ---- batches and callbacks -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["proxy", "core"])
async def test_250_hosts_in_batches_of_100_all_concluded_by_callback(
    tmp_path: Path, kind: str
) -> None:
    async with ForemanEmulator() as foreman, shipped(tmp_path, foreman, kind=kind) as (_, proxy):
        hosts = [f"host{i}.example.com" for i in range(250)]
        result = await foreman.run_job(proxy, hosts, "#!/bin/sh\nuptime\n", timeout=60)

        assert result.summary() == {("success", "callback"): 250}, result.summary()
        assert {(h.exit_status, h.stdout) for h in result} == {(0, simulated_text(2))}
        launches = foreman.requests_to("/tasks/launch")
        assert [len(r.body["input"]) for r in launches] == [100, 100, 50]
        job = foreman.jobs[0]
        for request in launches:
            assert request.status == 200
            assert set(request.answer) == {"parent"}, request.answer
            assert request.answer["parent"]["result"] == "success"
            assert request.answer_headers.get("content-type") == "application/json"
            assert request.answer_headers.get("x-request-id") == job.request_id
        assert {h.remote_state for h in job.hosts} == {"destroyed"}
        assert len({h.parent_task_id for h in job.hosts}) == 3  # one parent per batch
        # the proxy selection: one count per planning round of 100
        counts = foreman.requests_to("/tasks/count")
        assert len(counts) == 3 and all(r.status == 200 for r in counts)
        # callbacks: one per host, single form, Foreman's answer 200 "processing"
        assert delivered(foreman) == Counter({h.task_id: 1 for h in job.hosts})
        for request in foreman.callback_requests:
            assert request.status == 200
            assert request.headers["content-type"] == "application/json"
            assert request.headers["accept"] == "application/json,version=2"
        assert not any(h.dropped for h in job.hosts)
        assert job.polls == []  # the 600 s poll never came


async def test_the_poll_closes_tasks_whose_callbacks_foreman_rejects(tmp_path: Path) -> None:
    """Foreman refuses every callback (403: this proxy is not authorised for the callback
    controller): the proxy's plan must end (``paused``) so that the poll closes the job."""
    async with (
        ForemanEmulator(poll_interval=1.0, callback_status=403) as foreman,
        shipped(tmp_path, foreman) as (_, proxy),
    ):
        result = await foreman.run_job(proxy, [f"h{i}" for i in range(20)], timeout=25)
        assert result.summary() == {("success", "poll"): 20}, result.summary()
        assert {(h.exit_status, h.stdout) for h in result} == {(0, simulated_text(2))}
        rounds = foreman.jobs[0].polls
        assert all(not r.failed and not r.missing for r in rounds), rounds
        assert sum(len(r.stopped) for r in rounds) == 20
        assert foreman.callback_requests, "the proxy never tried a callback"
        assert {r.status for r in foreman.callback_requests} == {403}


async def test_poll_with_null_ids_of_tasks_without_parent(tmp_path: Path) -> None:
    """Tasks launched one by one (``RemoteTask#trigger``, operation ``single``) have no parent:
    the poll's ids include ``null``; an error answer would make all of them missing."""
    async with ForemanEmulator() as foreman, shipped(tmp_path, foreman, lines=8) as (_, proxy):
        job = await foreman.start_job(proxy, ["a", "b", "c"], single_launch=True)
        await until(lambda: all(h.remote_state == "triggered" for h in job.hosts), 20, "launch")
        assert {r.body["operation"] for r in foreman.requests_to("/tasks/launch")} == {"single"}
        round_ = await foreman.poll_once(job)
        assert round_.requests[0][-1] is None, round_.requests
        assert round_.failed == [] and round_.missing == [], round_
        result = await job.wait(20)
        assert result.summary() == {("success", "callback"): 3}, result.summary()


async def test_a_poll_of_more_than_1000_tasks_is_split_and_closes_them(tmp_path: Path) -> None:
    """``BATCH_SIZE`` 1000: 1010 tasks are polled in two requests (each with its parents'
    ids). Foreman refuses every callback, so the poll alone closes the job: the tasks that
    still run are left alone, those that ended are read and concluded, none is missing."""
    async with (
        ForemanEmulator(callback_status=403) as foreman,
        shipped(tmp_path, foreman, lines=1) as (_, proxy),
    ):
        job = await foreman.start_job(proxy, [f"h{i}" for i in range(1010)])
        await until(lambda: _triggered(job), 20, "the launches")
        await poll_until_done(foreman, job, 40, every=1.0)
        result = await job.wait(1)
        assert result.summary() == {("success", "poll"): 1010}, result.summary()
        keys = {h.key for h in job.hosts}
        parents = {h.parent_task_id for h in job.hosts}
        first, second = job.polls[0].requests
        assert len([i for i in first if i in keys]) == 1000 and set(first) - keys <= parents
        assert len([i for i in second if i in keys]) == 10
        assert not any(r.failed or r.missing for r in job.polls)


def _triggered(job: Job) -> bool:
    return all(h.remote_state not in (None, "new") for h in job.hosts)


# ---- a crash of the proxy --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "point", "count"),
    [
        pytest.param("proxy", "callbacks", 120, id="proxy-while-calling-back"),
        pytest.param("core", "callbacks", 120, id="core-while-calling-back"),
        # one batch: a kill while Foreman sends a further batch fails that batch for good
        # (TriggerProxyBatch does not retry), which is Foreman's doing, not the proxy's
        pytest.param("proxy", "launch", 100, id="proxy-right-after-the-launch"),
    ],
)
async def test_kill_9_and_restart_every_host_concluded_by_callback_or_poll(
    tmp_path: Path, kind: str, point: str, count: int
) -> None:
    """SIGKILL of the proxy (right after it acknowledged the launch: children being planned;
    or once callbacks flow), a restart on the same database, then Foreman's poll (its 600 s,
    scaled: every 2 s, after the restart) and the callbacks: every host ends successful with
    its whole output, each line once (also where the live output was read before the kill:
    REX de-duplicates records by index), none missing."""
    lines = 8
    async with (
        ForemanEmulator() as foreman,
        shipped(tmp_path, foreman, kind=kind, lines=lines) as (service, proxy),
    ):
        hosts = [f"h{i}" for i in range(count)]
        job = await foreman.start_job(proxy, hosts)
        if point == "launch":
            await until(lambda: _triggered(job), 30, "the launch")
        else:
            await until(lambda: sum(delivered(foreman).values()) >= 10, 30, "the first callbacks")
            # someone watches the job: REX stores the live output (by record index) as it goes
            for host in job.pending()[:20]:
                live = await foreman.live_output(job, host.key)
                assert live.error is None, live.error
        service.kill()
        await service.start()
        await poll_until_done(foreman, job, 40, every=2.0)
        result = await job.wait(1)

        by = Counter(h.concluded_by for h in result)
        print("concluded by", dict(by))
        assert set(by) <= {"callback", "poll"}, by
        assert len(result.succeeded) == len(hosts), result.summary()
        assert {(h.exit_status, h.stdout) for h in result} == {(0, simulated_text(lines))}
        assert not any(r.failed or r.missing for r in job.polls), job.polls
        assert service.tracebacks() == 0, service.tail(30)


# ---- cancel ------------------------------------------------------------------------------------


async def test_cancel_once_twice_and_abort(tmp_path: Path) -> None:
    async with (
        ForemanEmulator() as foreman,
        shipped(tmp_path, foreman, lines=400) as (_, proxy),
    ):
        job = await foreman.start_job(proxy, ["once", "twice", "aborted", "runs"])
        await until(lambda: len(foreman.callback_requests) == 0 and _running(job), 20, "start")
        await _first_output(foreman, job)
        await foreman.cancel(job, "once", "twice")
        cancels = foreman.requests_to("/cancel")
        assert [r.body for r in cancels] == ["", ""] and all(r.status == 200 for r in cancels)
        for request, name in zip(cancels, ("once", "twice"), strict=True):
            assert request.answer == {"task_id": job.host(name).key, "canceled_steps_count": 1}
        await foreman.cancel(job, "twice")  # the second: enforced at once
        await foreman.abort(job, "aborted")
        assert len(foreman.requests_to("/cancel")) == 3
        once, twice, aborted = (job.host(n) for n in ("once", "twice", "aborted"))
        await asyncio.wait_for(once.done.wait(), 15)  # the killed job's callback
        assert once.outcome is not None and twice.outcome is not None
        assert aborted.outcome is not None
        assert (once.outcome.result, once.outcome.error) == ("cancelled", fm.TASK_CANCELLED)
        assert once.outcome.concluded_by == "callback"
        assert fm.ruby_to_s(once.outcome.exit_status) != "0"
        assert (twice.outcome.result, twice.outcome.error) == ("cancelled", fm.CANCEL_ENFORCED)
        assert (aborted.outcome.result, aborted.outcome.error) == ("cancelled", fm.ABORTED)
        # the proxy still reports the killed jobs; Foreman drops them (the steps are done)
        await until(lambda: bool(twice.dropped and aborted.dropped), 15, "late callbacks")
        await foreman.cancel(job, "runs")
        await asyncio.wait_for(job.finished.wait(), 15)


async def test_cancel_right_after_the_launch(tmp_path: Path) -> None:
    """Cancelled at once: the proxy may not have planned a task yet (404); Foreman retries the
    cancel (its connection-error handling, ``retry_interval``) and every host ends cancelled."""
    async with (
        ForemanEmulator(retry_interval=0.5) as foreman,
        shipped(tmp_path, foreman, lines=400) as (_, proxy),
    ):
        job = await foreman.start_job(proxy, [f"h{i}" for i in range(100)])
        await until(lambda: _triggered(job), 20, "the launch")
        await foreman.cancel(job)
        result = await job.wait(25)
        assert result.summary() == {("cancelled", "callback"): 100}, result.summary()
        assert {r.status for r in foreman.requests_to("/cancel")} <= {200, 404}
        assert {h.error for h in result} == {fm.TASK_CANCELLED}


def _running(job: Job) -> bool:
    return all(h.remote_state == "parent-triggered" for h in job.hosts)


async def _first_output(foreman: ForemanEmulator, job: Job) -> None:
    """Until every host's task shows output (the live output Foreman's page reads)."""
    deadline = time.monotonic() + 20
    while True:
        outputs = [await foreman.live_output(job, h.key) for h in job.hosts]
        if all(o.events and o.error is None for o in outputs):
            return
        assert time.monotonic() < deadline, [o.error for o in outputs]
        await asyncio.sleep(0.1)


# ---- Foreman sends a launch again --------------------------------------------------------------


async def test_a_relaunch_after_a_lost_answer_runs_each_host_once(tmp_path: Path) -> None:
    """Without batch triggering a ``ProxyAction`` launches its host alone and retries on a
    read timeout: the proxy got the first launch, only its answer was lost."""
    async with (
        ForemanEmulator(retry_interval=0.5) as foreman,
        shipped(tmp_path, foreman, lines=4) as (_, proxy),
    ):
        foreman.lost_answers["launch"] = 2
        result = await foreman.run_job(proxy, ["a", "b", "c"], batch_triggering=False, timeout=25)
        assert result.summary() == {("success", "callback"): 3}, result.summary()
        job = foreman.jobs[0]
        keys = Counter(k for r in foreman.requests_to("/tasks/launch") for k in r.body["input"])
        assert sorted(keys.values()) == [1, 2, 2], keys
        assert delivered(foreman) == Counter({h.task_id: 1 for h in job.hosts})
        assert {h.stdout for h in result} == {simulated_text(4)}


# ---- live output -----------------------------------------------------------------------------


async def test_live_output_while_running_then_the_callback(tmp_path: Path) -> None:
    lines = 12
    async with ForemanEmulator() as foreman, shipped(tmp_path, foreman, lines=lines) as (_, proxy):
        job = await foreman.start_job(proxy, ["h1", "h2"])
        await until(lambda: _running(job), 20, "launch")
        seen: list[int] = []
        while not job.done:
            live = await foreman.live_output(job, "h1")
            if live.error is not None and not seen:
                # The host's task is planned when its batch's parent runs, an instant after the
                # launch was answered (as in the original): a read before it is a 404 once.
                assert "404" in live.error, live.error
            else:
                assert live.error is None, live.error
                seen.append(len(live.events))
            await asyncio.sleep(REFRESH)
        result = await job.wait(20)
        assert result.summary() == {("success", "callback"): 2}
        assert {h.stdout for h in result} == {simulated_text(lines)}  # each line once
        assert max(seen) >= 1


# ---- real hosts ------------------------------------------------------------------------------


async def test_real_hosts_success_failure_and_unreachable(
    tmp_path: Path,
    sshd: Sshd,  # noqa: F811
    ssh_users: TestUsers,  # noqa: F811
    ssh_keys: SshKeys,  # noqa: F811
    closed_port: int,  # noqa: F811
) -> None:
    """Per host as ``RunHostJob`` concludes it: exit 0 → success; exit 3 → "Job execution
    failed" with exit status 3; a host nobody listens on → exit status ``EXCEPTION`` with the
    connection error in the output (the original raises in ``start``: issue 13 item 10)."""
    user = ssh_users.rexuser.name
    with sshd_support.user_directory(ssh_users.rexuser) as workdir:
        async with (
            ForemanEmulator() as foreman,
            shipped(
                tmp_path,
                foreman,
                lines=None,
                rex={"ssh_identity_key_file": str(ssh_keys.proxy.private)},
            ) as (_, proxy),
        ):
            common = {"ssh_user": user, "effective_user": user, "remote_working_dir": str(workdir)}
            hosts = [
                {"hostname": sshd.host, "ssh_port": sshd.port, "script": "echo fine\n", **common},
                {
                    "hostname": sshd.host,
                    "ssh_port": sshd.port,
                    "script": "echo broken\nexit 3\n",
                    **common,
                },
                {"hostname": "127.0.0.1", "ssh_port": closed_port, **common},
            ]
            fine, broken, unreachable = await foreman.run_job(proxy, hosts, timeout=25)
    assert (fine.result, fine.exit_status, fine.concluded_by) == ("success", 0, "callback")
    assert "fine" in fine.stdout
    assert (broken.result, broken.exit_status, broken.error) == ("error", 3, fm.JOB_FAILED)
    assert "broken" in broken.stdout
    assert unreachable.result == "error" and unreachable.error == fm.JOB_FAILED
    assert unreachable.exit_status == "EXCEPTION", unreachable
    assert "Could not establish connection" in unreachable.output, unreachable.output
