"""The fault scenarios, shared by the fast subset (``make test``) and the long runs
(``make reliability``), which differ only in their sizes.

* :func:`crash_run`: hundreds of jobs in flight, SIGKILL of the service at random instants
  (drawn from the seed), a restart on the same database after each, then the tallies.
* :func:`sigterm_run`: SIGTERM while jobs run, a restart, the tallies.
* Hosts are :class:`SimulatedHosts` (``REX_SIMULATE``: the fake runner prints the lines of a
  file, one per refresh) or :class:`SshHosts` (real sshd on loopback ports, a marker line per
  run of the script on the host, so a script run twice is seen there).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import harness
from .harness import Foreman, Service, Snapshot, Tally

KILL_WINDOW = (2.0, 6.0)
"""Seconds after the first launch in which the first kill falls."""
RESTART_KILL_WINDOW = (0.3, 4.0)
"""Seconds after a restart in which a further kill falls (recovery is under way then)."""
FINAL_TIMEOUT = 120.0
"""How long after the last restart every task must be final and called back."""


class SimulatedHosts:
    """Jobs for ``REX_SIMULATE``: each prints ``lines`` lines, one per runner refresh."""

    def __init__(self, directory: Path, lines: int = 4) -> None:
        self.path = directory / "simulated-output.txt"
        self.text = "".join(f"simulated line {i}\n" for i in range(lines))
        self.path.write_text(self.text)

    def env(self) -> dict[str, str]:
        return {"REX_SIMULATE": "1", "REX_SIMULATE_PATH": str(self.path)}

    def rex(self) -> dict[str, Any]:
        return {}

    def jobs(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {key: harness.simulated_job(key) for key in keys}

    def expected_stdout(self, key: str) -> str:
        return self.text

    def host_runs(self) -> dict[str, int] | None:
        return None

    def exit_seen(self) -> set[str] | None:
        return None

    def leftovers(self) -> int:
        return 0


_KEY_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass
class SshHosts:
    """Jobs on real sshd servers (round robin), as the dedicated ``/bin/sh`` test user.

    The script appends the job's key to ``markers/<key>`` (one line per run), sleeps (job
    ``i`` sleeps ``sleeps[i % len(sleeps)]`` seconds, so that jobs end all the time) and
    prints ``done <key>``."""

    servers: Sequence[Any]  # tests.support.sshd.Sshd
    user: str
    identity: Path
    workdir: Path  # remote_working_dir, owned by the user
    markers: Path  # owned by the user
    sleeps: Sequence[float] = (3.0,)
    extra_rex: dict[str, Any] = field(default_factory=dict)
    namespaces: Sequence[Any] = ()  # faults.NetnsHost of the servers at the end of the list
    server_of: dict[str, int] = field(default_factory=dict)  # key -> index in servers

    def env(self) -> dict[str, str]:
        return {}

    def rex(self) -> dict[str, Any]:
        return {"ssh_identity_key_file": str(self.identity), **self.extra_rex}

    def script(self, key: str, sleep: float) -> str:
        return (
            f"#!/bin/sh\necho {key} >> {self.markers}/{key}\nsleep {sleep:g}\n"
            f"echo done {key}\n"
        )

    def jobs(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        result = {}
        for index, key in enumerate(keys):
            self.server_of[key] = index % len(self.servers)
            server = self.servers[self.server_of[key]]
            result[key] = harness.ssh_job(
                key,
                server.host,
                server.port,
                self.user,
                self.workdir,
                self.script(key, self.sleeps[index % len(self.sleeps)]),
            )
        return result

    def expected_stdout(self, key: str) -> str:
        return f"done {key}\n"

    def host_runs(self) -> dict[str, int]:
        runs = {}
        for path in self.markers.iterdir():
            runs[path.name] = len(path.read_text().splitlines())
        return runs

    def exit_seen(self) -> set[str]:
        """Keys whose job directory on the host holds an exit code (the proxy may not have
        stored it yet)."""
        seen = set()
        for exit_file in self.workdir.glob("foreman-ssh-cmd-*/exit_code"):
            with contextlib.suppress(OSError):
                match = _KEY_RE.search((exit_file.parent / "script").read_text())
                if match and exit_file.read_text().strip():
                    seen.add(match.group(0))
        return seen

    def leftovers(self) -> int:
        """Job directories still on the host (cleanup is on: there should be none)."""
        return len(list(self.workdir.glob("foreman-ssh-cmd-*")))


Hosts = SimulatedHosts | SshHosts


@dataclass
class Run:
    """One scenario run: its Foreman, service and launches, for the test to inspect."""

    foreman: Foreman
    service: Service
    tally: Tally
    figures: dict[str, int]


async def _final(service: Service, foreman: Foreman, keys: set[str], timeout: float) -> dict:
    """Wait until every task is ``stopped`` and has its callback (or ``timeout``); the last
    states read."""
    states: dict[str, Any] = {}

    async def settled() -> bool:
        nonlocal states
        states = await harness.plan_states(service, keys)
        delivered = foreman.delivered()
        return all(
            (states.get(k) or {}).get("state") == "stopped" and harness.foreman_task(k) in delivered
            for k in keys
        )

    await harness.wait_until(settled, timeout, interval=1.0)
    return states


KILL_POINTS = ("time", "planning", "exit", "callback", "answered")
"""Where a kill falls: ``time`` a random instant of the window; ``planning`` just after a
batch launch was acknowledged (its children are being planned); ``exit`` as soon as a job's
directory on a host holds its exit code (real sshd only: the proxy may not have stored it);
``callback`` when a callback reaches Foreman, before Foreman answers; ``answered`` right after
Foreman sent its 200 (before the proxy can record it: the one case a callback may come twice)."""
POINT_TIMEOUT = 90.0


async def crash_run(
    workdir: Path,
    hosts: Hosts,
    *,
    kind: str,
    backend: str,
    seed: int,
    tasks: int,
    points: Sequence[str] = ("time",),
    batch_size: int = 100,
    spacing: float = 1.0,
    signum: str = "KILL",
    scenario: str = "sigkill",
) -> Run:
    """Launch ``tasks`` jobs in batches; at each of ``points`` (see :data:`KILL_POINTS`) kill
    the service (SIGKILL, or SIGTERM with ``signum="TERM"``) and restart it on the same
    database; then every acknowledged task must end called back once (see
    :meth:`Tally.assert_promise`)."""
    for point in points:
        assert point in KILL_POINTS, point
    rng = random.Random(seed)
    foreman = Foreman(latency=0.05)
    await foreman.start()
    try:
        async with harness.database(backend, workdir) as database:
            service = Service(
                workdir, kind, database, foreman.url, env=hosts.env(), rex=hosts.rex()
            )
            try:
                return await _crash(
                    service, foreman, hosts, database, rng, seed, tasks, points, batch_size,
                    spacing, signum, scenario, backend,
                )
            finally:
                service.close()
    finally:
        await foreman.stop()


async def _reach(
    point: str,
    number: int,
    rng: random.Random,
    started: float,
    service: Service,
    foreman: Foreman,
    hosts: Hosts,
    acknowledged: Callable[[], int],
    settled: Callable[[], bool],
) -> str:
    """Wait for the kill point; for ``callback``/``answered`` the Foreman's trap kills (the
    returned label says what happened: the point, or ``time`` when it never came: the wait
    ends early once ``settled()`` says no callback can come any more)."""
    if point == "time":
        delay = rng.uniform(*(RESTART_KILL_WINDOW if number else KILL_WINDOW))
        await asyncio.sleep(max(0.0, started + delay - time.monotonic()))  # the kill instant
        return f"time+{delay:.2f}s"
    deadline = time.monotonic() + POINT_TIMEOUT
    if point == "planning":
        before = acknowledged()
        while acknowledged() == before and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        return point if acknowledged() > before else "time"
    if point == "exit":
        assert isinstance(hosts, SshHosts), "exit points need real hosts"
        while not hosts.exit_seen() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return point
    killed = asyncio.Event()
    loop = asyncio.get_running_loop()

    def kill() -> None:
        service.kill()
        loop.call_soon_threadsafe(killed.set)

    foreman.trap = (point if point == "answered" else "received", kill)
    while not killed.is_set() and not settled() and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(killed.wait(), 0.1)
    foreman.trap = None
    return point if killed.is_set() else "time"


async def _crash(
    service: Service,
    foreman: Foreman,
    hosts: Hosts,
    database: str,
    rng: random.Random,
    seed: int,
    tasks: int,
    points: Sequence[str],
    batch_size: int,
    spacing: float,
    signum: str,
    scenario: str,
    backend: str,
) -> Run:
    await service.start()
    keys = harness.new_keys(tasks, rng)
    jobs = hosts.jobs(keys)
    started = time.monotonic()
    launches = harness.Launches()
    launching = asyncio.create_task(
        harness.launch_batches(
            service,
            jobs,
            batch_size=batch_size,
            spacing=spacing,
            retry_for=FINAL_TIMEOUT,
            launches=launches,
        )
    )
    instants: list[float] = []
    restarts: list[float] = []
    reached: list[str] = []
    snapshots: list[Snapshot] = []
    stop_seconds: list[float] = []
    for number, point in enumerate(points):
        label = await _reach(
            point, number, rng, started, service, foreman, hosts,
            lambda: len(launches.acknowledged),
            lambda: launching.done()
            and launches.acknowledged <= foreman.delivered_keys(),
        )
        reached.append(label)
        exit_seen = hosts.exit_seen()
        if service.proc is not None and service.proc.poll() is not None:
            instants.append(service.killed_at)  # the trap killed it already
        elif signum == "KILL":
            instants.append(service.kill())
        else:
            instants.append(time.time())
            stop_seconds.append(await service.terminate())
        snapshots.append(await harness.snapshot(database, keys, exit_seen))
        restarts.append(time.time())
        await service.start()
        started = time.monotonic()
    await launching
    final = await _final(service, foreman, launches.acknowledged, FINAL_TIMEOUT)
    context: dict[str, Any] = {
        "process": service.kind,
        "store": backend,
        "seed": seed,
        "tasks": tasks,
        "kills": reached,
        "refused_launches": len(launches.refused),
        "launch_retries": launches.retries,
        "existing_on_retry": launches.existing_on_retry,
    }
    context["start_s"] = service.start_seconds
    if stop_seconds:
        context["sigterm_stop_s"] = [round(s, 2) for s in stop_seconds]
    tally = Tally(
        scenario,
        context,
        launches.acknowledged,
        foreman,
        final,
        kill_instants=instants,
        restart_instants=restarts,
        snapshots=snapshots,
        host_runs=hosts.host_runs(),
        expected_stdout=hosts.expected_stdout,
    )
    figures = tally.emit_all()
    leftovers = hosts.leftovers()
    if isinstance(hosts, SshHosts):
        figures["job_dirs_left"] = leftovers
        harness.emit("job_dirs_left", leftovers, unit="dirs", scenario=scenario, **context)
    figures["tracebacks_in_log"] = _tracebacks(service, tally)
    return Run(foreman, service, tally, figures)


def _tracebacks(service: Service, tally: Tally) -> int:
    """Tracebacks in the service's log and stderr (a fault must be one clear line)."""
    count = service.tracebacks()
    harness.emit(
        "tracebacks_in_log", count, unit="tracebacks", scenario=tally.scenario, **tally.context
    )
    return count


# ---- the database fails for a while ------------------------------------------------------------


@dataclass
class StoreOutage:
    """How to break the database and mend it (see :mod:`.faults`)."""

    name: str
    database: str  # the service's database setting
    break_it: Callable[[], Any]
    mend_it: Callable[[], Any]


FAULT_LOG_MARKERS = ("cannot be used", "database")
"""A log line reporting the fault names the database and says it cannot be used."""


def _fault_lines(service: Service) -> list[str]:
    return [
        line
        for line in service.log_text().splitlines()
        if all(marker in line.lower() for marker in FAULT_LOG_MARKERS)
    ]


async def _features_dynflow(service: Service) -> dict[str, Any]:
    async with harness.httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        answer = await client.get("/v2/features")
        answer.raise_for_status()
        return answer.json().get("dynflow") or {}


def _reports_fault(entry: dict[str, Any]) -> bool:
    """The ``/v2/features`` entry of dynflow says the database fails: not ``running``, or a
    word about the database in it."""
    return entry.get("state") != "running" or "database" in harness.json.dumps(entry).lower()


async def store_outage_run(
    workdir: Path,
    outage: StoreOutage,
    *,
    tasks: int,
    seconds: float,
    seed: int,
    lines: int = 10,
) -> tuple[Run, dict[str, Any]]:
    """Jobs run; the database fails for ``seconds`` (``outage.break_it``) and comes back
    (``outage.mend_it``). While it fails: a log line says so, ``/v2/features`` says so, a
    launch is answered 503; afterwards every acknowledged task (and the refused batch, sent
    again as Foreman would) ends called back once."""
    rng = random.Random(seed)
    hosts = SimulatedHosts(workdir, lines=lines)
    foreman = Foreman(latency=0.02)
    await foreman.start()
    service = Service(workdir, "proxy", outage.database, foreman.url, env=hosts.env())
    observed: dict[str, Any] = {}
    try:
        await service.start()
        keys = harness.new_keys(tasks, rng)
        launches = await harness.launch_batches(service, hosts.jobs(keys), batch_size=100)
        assert launches.acknowledged, f"nothing launched: {launches.refused} {service.tail()}"

        async def some_running() -> bool:
            states = await harness.plan_states(service, keys[:20])
            return any(s.get("state") == "running" for s in states.values())

        await harness.wait_until(some_running, 30)
        broken_at = time.monotonic()
        outage.break_it()

        async def logged() -> bool:
            return bool(_fault_lines(service))

        observed["fault_logged_after_s"] = (
            round(time.monotonic() - broken_at, 2)
            if await harness.wait_until(logged, min(seconds, 30))
            else None
        )
        observed["fault_log_line"] = (_fault_lines(service) or [""])[0][:300]
        entry = await _features_dynflow(service)
        observed["features_during"] = {
            k: v for k, v in entry.items() if k not in ("settings", "capabilities")
        } | {"reports_fault": _reports_fault(entry)}
        probe = harness.new_keys(10, rng)
        refused = await harness.launch_batches(service, hosts.jobs(probe), batch_size=10)
        observed["launch_status_during"] = (
            200 if refused.acknowledged else sorted(set(refused.refused.values()))
        )
        async with harness.httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            answer = await client.post(
                f"{service.api}/tasks/launch",
                json={"operation": "ssh", "input": hosts.jobs(harness.new_keys(1, rng))},
            )
            observed["launch_body_during"] = answer.text[:200]
        await asyncio.sleep(max(0.0, broken_at + seconds - time.monotonic()))  # the outage
        outage.mend_it()
        mended_at = time.monotonic()

        async def features_back() -> bool:
            return not _reports_fault(await _features_dynflow(service))

        observed["features_back_after_s"] = (
            round(time.monotonic() - mended_at, 2)
            if await harness.wait_until(features_back, 60, interval=0.5)
            else None
        )
        # Foreman sends the refused batch again.
        again = await harness.launch_batches(
            service, hosts.jobs(probe), batch_size=10, retry_for=60
        )
        observed["relaunch_status"] = 200 if again.acknowledged else sorted(
            set(again.refused.values())
        )
        acknowledged = launches.acknowledged | again.acknowledged
        final = await _final(service, foreman, acknowledged, FINAL_TIMEOUT)
        context = {"store": outage.name, "seed": seed, "tasks": tasks, "outage_s": seconds}
        tally = Tally(
            f"store-outage-{outage.name}",
            context,
            acknowledged,
            foreman,
            final,
            expected_stdout=hosts.expected_stdout,
        )
        figures = tally.emit_all()
        figures["tracebacks_in_log"] = _tracebacks(service, tally)
        for name, value in observed.items():
            harness.emit(name, value, unit="observation", scenario=tally.scenario, **context)
        return Run(foreman, service, tally, figures), observed
    finally:
        service.close()
        await foreman.stop()


# ---- Foreman away for a while --------------------------------------------------------------------


def backoff_bound(outage: float, first: float = 2.0, ceiling: float = 300.0) -> float:
    """The longest a callback can arrive after Foreman is back, with the shipped back-off
    (``callback_retry_interval`` doubling up to ``callback_retry_max_interval``): the interval
    in force when Foreman returns is at most the time failed so far plus the first one."""
    return min(outage + first, ceiling)


async def foreman_outage_run(
    workdir: Path,
    *,
    kind: str,
    backend: str,
    tasks: int,
    mode: str,
    seconds: float,
    seed: int,
) -> tuple[Run, dict[str, Any]]:
    """Jobs run while Foreman is ``down`` (connections refused) or answers 500 (``error``) for
    ``seconds``, from before the first callback; then Foreman is back. Every callback must
    arrive exactly once, within :func:`backoff_bound` of Foreman's return (plus the time to
    send them all). The service keeps its shipped callback settings."""
    assert mode in ("down", "error"), mode
    rng = random.Random(seed)
    hosts = SimulatedHosts(workdir, lines=4)
    foreman = Foreman()
    await foreman.start()
    try:
        async with harness.database(backend, workdir) as database:
            service = Service(workdir, kind, database, foreman.url, env=hosts.env())
            try:
                await service.start()
                if mode == "down":
                    await foreman.go_down()
                else:
                    foreman.mode = "error"
                began = time.monotonic()
                keys = harness.new_keys(tasks, rng)
                launches = await harness.launch_batches(service, hosts.jobs(keys))
                await asyncio.sleep(max(0.0, began + seconds - time.monotonic()))  # the outage
                await foreman.come_back()
                back = time.time()
                final = await _final(
                    service, foreman, launches.acknowledged, backoff_bound(seconds) + 60
                )
                delivered = foreman.delivered()
                arrivals = [
                    min(r.received for r in delivered[harness.foreman_task(k)])
                    for k in launches.acknowledged
                    if harness.foreman_task(k) in delivered
                ]
                failed_attempts = Counter(r.task_id for r in foreman.records if r.status != 200)
                observed = {
                    "last_callback_after_back_s": round(max(arrivals) - back, 1)
                    if arrivals
                    else None,
                    "first_callback_after_back_s": round(min(arrivals) - back, 1)
                    if arrivals
                    else None,
                    "bound_s": backoff_bound(seconds),
                    "answered_500_max_per_task": max(failed_attempts.values(), default=0),
                }
                context = {
                    "process": kind,
                    "store": backend,
                    "seed": seed,
                    "tasks": tasks,
                    "mode": mode,
                    "outage_s": seconds,
                }
                tally = Tally(
                    f"foreman-{mode}",
                    context,
                    launches.acknowledged,
                    foreman,
                    final,
                    expected_stdout=hosts.expected_stdout,
                )
                figures = tally.emit_all()
                figures["tracebacks_in_log"] = _tracebacks(service, tally)
                for name, value in observed.items():
                    unit = "s" if name.endswith("_s") else "attempts"
                    harness.emit(name, value, unit=unit, scenario=tally.scenario, **context)
                return Run(foreman, service, tally, figures), observed
            finally:
                service.close()
    finally:
        await foreman.stop()


# ---- one host fails mid-script ---------------------------------------------------------------


async def host_fault_run(
    workdir: Path,
    hosts: SshHosts,
    *,
    victims: Sequence[int],
    break_it: Callable[[], Any],
    tasks: int,
    seed: int,
    scenario: str,
    timeout: float,
) -> tuple[Run, dict[str, Any]]:
    """Jobs on every server; once the scripts on the ``victims`` servers run (their markers are
    on the host), ``break_it()``; then every task must be called back: the victims' with the
    status documented for a lost connection (255), all the others with 0, their output, once."""
    rng = random.Random(seed)
    foreman = Foreman()
    await foreman.start()
    database = str(workdir / "dynflow.sqlite")
    service = Service(workdir, "proxy", database, foreman.url, rex=hosts.rex())
    try:
        await service.start()
        keys = harness.new_keys(tasks, rng)
        launches = await harness.launch_batches(service, hosts.jobs(keys))
        doomed = {k for k in launches.acknowledged if hosts.server_of[k] in victims}
        assert doomed, "no job on the servers to break"

        async def running() -> bool:
            return all((hosts.markers / key).exists() for key in doomed)

        assert await harness.wait_until(running, 60, interval=0.1), "the scripts never ran"
        broken_at = time.time()
        break_it()
        final = await _final(service, foreman, launches.acknowledged, timeout)
        delivered = foreman.delivered()
        status: dict[str, Any] = {
            key: delivered[harness.foreman_task(key)][0].data.get("exit_status")
            for key in launches.acknowledged
            if harness.foreman_task(key) in delivered
        }
        doomed_times = [
            delivered[harness.foreman_task(k)][0].received - broken_at
            for k in doomed
            if harness.foreman_task(k) in delivered
        ]
        observed = {
            "victim_jobs": len(doomed),
            "victims_255": sum(1 for k in doomed if status.get(k) == 255),
            "victims_other_status": sorted(
                {str(status.get(k)) for k in doomed if status.get(k) != 255}
            ),
            "victims_reported_after_s": round(max(doomed_times), 1) if doomed_times else None,
            "rest_jobs": len(launches.acknowledged - doomed),
            "rest_ok": sum(
                1 for k in launches.acknowledged - doomed if status.get(k) == 0
            ),
        }
        context = {"seed": seed, "tasks": tasks}
        tally = Tally(
            scenario,
            context,
            launches.acknowledged - doomed,
            foreman,
            final,
            host_runs=hosts.host_runs(),
            expected_stdout=hosts.expected_stdout,
        )
        figures = tally.emit_all()
        figures["tracebacks_in_log"] = _tracebacks(service, tally)
        not_final = [k for k in doomed if (final.get(k) or {}).get("state") != "stopped"]
        observed["victims_not_final"] = len(not_final)
        observed["victims_callbacks"] = sum(
            len(delivered.get(harness.foreman_task(k), [])) for k in doomed
        )
        for name, value in observed.items():
            if isinstance(value, list):  # a figure is a number: the count, the values beside it
                harness.emit(name, len(value), unit="statuses", scenario=scenario, values=value,
                             **context)
                continue
            unit = "s" if name.endswith("_s") else "tasks"
            harness.emit(name, value, unit=unit, scenario=scenario, **context)
        return Run(foreman, service, tally, figures), observed
    finally:
        service.close()
        await foreman.stop()
