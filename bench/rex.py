#!/usr/bin/env python
"""Remote execution over SSH benchmark: the real service against the OpenSSH client.

Prints one JSON line per figure, e.g.::

    {"figure": "rex_hosts_per_s", "value": 41.2, "unit": "hosts/s", "store": "sqlite-file",
     "hosts": 500, "kex": "curve25519-sha256", "seconds": 12.1, "failures": 0, ...}

The setup: the dedicated ``/bin/sh`` test user of ``tests/support/sshd.py`` (root's shell
start-up files cost ~0.1 s a session); the harness's proxy key as an authorized key, without
its user certificate (OpenSSH's ``-i`` logs in with the plain key, asyncssh would prefer the
certificate, and sshd spends ~7 ms more CPU on a certificate login here); N + 1 distinct
(loopback address, port) pairs served by real ``sshd`` instances (OpenSSH listens on at most 16
sockets per process, so ``ceil((N + 1) / 16)`` instances, each on 16 addresses
``127.1.<i>.<j>`` and its own port): no two "hosts" can share a connection. One pair is kept
for a warm-up job.

Figures:

* ``openssh_floor_hosts_per_s``: ``ssh ... <user>@<addr> -p <port> true`` for the N pairs
  with the OpenSSH client, 50 in parallel (no control master, no known hosts, key
  authentication), pinned to the key exchange our client (asyncssh, with the service's own
  connection options) negotiates with this sshd: what sshd on this machine can accept. The
  line names the kex (``kex``).
* ``rex_hosts_per_s``: N / the time from one ``POST /tasks/launch`` (operation ``ssh``, N
  inputs keyed by fresh UUIDs, ``RunScript`` of ``true`` as the test user) until the last of
  the N callbacks reached a fake Foreman served by this process. Every callback must carry
  exit status 0; ``failures`` counts the others (``first_failure`` shows one).
* ``rex_vs_floor_ratio``: the two rates divided (target at least 0.75).

Both rate lines say where the CPU went (the "hosts" share the machine's cores with the
clients): ``client_cpu_s``/``service_cpu_s``, ``sshd_side_cpu_s`` (sshd and the commands it
ran: the machine's busy time minus the client side and this process, as OpenSSH's
per-connection processes are reaped by pid 1 and take their CPU time with them), per host
too (``..._ms_per_host``), and ``machine_cpu_util`` (the busy share of all cores).
* ``service_peak_rss_mb``: the service's peak RSS (``VmHWM``, and the peak of the samples).
* ``service_kb_per_concurrent_host``: (peak RSS sampled during the run minus the idle RSS
  after a warm-up job) / the peak number of running plans (``GET /tasks/count?state=running``),
  both sampled every ~50 ms. Target below 150 KB.
* ``ansible_raw_true_s``: ``ansible all -m raw -a true -f 100`` over the same N pairs (ansible's
  own defaults: OpenSSH's default kex, control master), with ``ansible-core`` pip-installed into
  a throw-away virtualenv (``--ansible-venv DIR`` reuses one); a ``skipped`` line when that
  fails. Not run with ``--quick`` unless ``--ansible`` is given; ``--no-ansible`` skips it.

The service is ``smart-proxy-dynflow-core`` as a subprocess with its own config directory
(plain HTTP on 127.0.0.1, log level ERROR, a fresh SQLite file or with ``--store postgresql``
a fresh PostgreSQL database as in ``bench/api.py``) and ``settings.d/remote_execution_ssh.yml``
enabling the ``script`` plugin (the proxy key, a known_hosts file in the temp dir).

Usage: ``bench/rex.py [--quick] [--hosts N] [--timeout S] [--store sqlite-file|postgresql]
[--profile DIR] [--ansible | --no-ansible] [--ansible-venv DIR]``. Needs root (it creates
users and starts sshd); everything is removed at the end, also on failure (test users, sshd
processes, temp dirs; leftovers of a killed run are swept by the next one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib  # bench/benchlib.py, next to this script
import httpx
import pgdb  # bench/pgdb.py, next to this script
import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support import sshd as harness  # noqa: E402 - needs the path above

PROG = "smart-proxy-dynflow-core"
STORE_SQLITE = "sqlite-file"
STORE_PG = "postgresql"
PG_PREFIX = "dynflow_rexbench_"

RUN_SCRIPT = "Proxy::RemoteExecution::Ssh::Actions::RunScript"
SOCKETS_PER_SSHD = 16  # OpenSSH's MAX_LISTEN_SOCKS
FLOOR_PARALLEL = 50
ANSIBLE_FORKS = 100
SAMPLE_INTERVAL = 0.05

FIGURE_UNITS = {
    "openssh_floor_hosts_per_s": "hosts/s",
    "rex_hosts_per_s": "hosts/s",
    "rex_vs_floor_ratio": "x",
    "service_peak_rss_mb": "MB",
    "service_kb_per_concurrent_host": "KB",
    "ansible_raw_true_s": "s",
}
TARGETS = {"rex_vs_floor_ratio": 0.75, "service_kb_per_concurrent_host": 150}
REX_FIGURES = (
    "rex_hosts_per_s",
    "rex_vs_floor_ratio",
    "service_peak_rss_mb",
    "service_kb_per_concurrent_host",
)


def figure_line(figure: str, value: float, store: str, **extra: Any) -> dict[str, Any]:
    return benchlib.figure_line(figure, value, store, FIGURE_UNITS, TARGETS, **extra)


def error_line(figure: str, store: str, exc: BaseException | str) -> dict[str, Any]:
    if isinstance(exc, BaseException):
        exc = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return {"figure": figure, "error": exc, "store": store}


def cpu_seconds(proc: psutil.Process, *, children: bool = False) -> float:
    """User + system CPU of ``proc`` (with ``children``: of its reaped children instead)."""
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return 0.0
    if children:
        return float(times.children_user + times.children_system)
    return float(times.user + times.system)


def machine_busy() -> float:
    """CPU seconds every core of the machine spent busy so far (not idle, not iowait)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def own_children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """Where the CPU went during a stage, in CPU seconds and ms per host.

    ``client`` is the process doing the SSH client work (the service), or None when that is
    this process's own children (the OpenSSH clients). The sshd side (sshd, and the commands
    it ran for the sessions) cannot be read from the sshd processes: OpenSSH's per-connection
    processes outlive their parents and are reaped by pid 1, which takes their CPU time with
    it. So it is the machine's busy time minus the client and this process (anything else
    running on the machine would count there too).
    """

    def __init__(self, client: psutil.Process | None) -> None:
        self.client = client
        self.me = psutil.Process()
        self.start = self._read()

    def _read(self) -> tuple[float, float, float]:
        client = cpu_seconds(self.client) if self.client is not None else own_children_cpu()
        return machine_busy(), client, cpu_seconds(self.me)

    def report(self, elapsed: float, hosts: int, client_name: str) -> dict[str, Any]:
        busy, client, me = (b - a for a, b in zip(self.start, self._read(), strict=True))
        sshd_side = max(busy - client - me, 0.0)
        return {
            f"{client_name}_cpu_s": round(client, 2),
            f"{client_name}_cpu_ms_per_host": round(client * 1000 / hosts, 2),
            "sshd_side_cpu_s": round(sshd_side, 2),
            "sshd_side_cpu_ms_per_host": round(sshd_side * 1000 / hosts, 2),
            "bench_cpu_s": round(me, 2),
            "machine_cpu_s": round(busy, 2),
            # the share of all cores that was busy, whoever used it
            "machine_cpu_util": round(busy / (elapsed * (os.cpu_count() or 1)), 2),
        }


# ---- the hosts: users, keys, sshd instances -----------------------------------------------------
@dataclass(frozen=True)
class Host:
    address: str
    port: int
    server: harness.Sshd


class Fleet:
    """Test users, the proxy key and ``count`` (address, port) pairs on real sshd instances."""

    def __init__(self, count: int, stack: contextlib.ExitStack) -> None:
        self.count = count
        self.stack = stack
        self.servers: list[harness.Sshd] = []
        self.hosts: list[Host] = []

    def setup(self) -> None:
        reason = harness.missing_requirement()
        if reason is not None:
            raise RuntimeError(reason)
        harness.sweep_leftovers()
        self.users = harness.TestUsers.create()
        self.stack.callback(self.users.remove)
        self.user = self.users.rexuser
        self.keys = harness.SshKeys.create(principals=self.users.names)
        self.stack.callback(self.keys.remove)
        # The proxy key without its user certificate, so that every client authenticates the
        # same way (an authorized key): OpenSSH's ``-i`` offers the plain key first, asyncssh
        # the certificate, and sshd spends ~7 ms more CPU on a certificate login here.
        directory = harness.make_temp_dir("sshkeys")
        self.stack.callback(shutil.rmtree, directory, True)
        self.key = harness.KeyPair(directory / harness.SshKeys.PROXY_KEY_NAME)
        for source, target in (
            (self.keys.proxy.private, self.key.private),
            (self.keys.proxy.public, self.key.public),
        ):
            shutil.copyfile(source, target)
        self.key.private.chmod(0o600)
        self.key.public.chmod(0o644)
        self.working_dir = self.stack.enter_context(harness.user_directory(self.user))
        instances = math.ceil(self.count / SOCKETS_PER_SSHD)
        if instances > 250:
            raise ValueError(f"at most {250 * SOCKETS_PER_SSHD} hosts")
        for index in range(instances):
            size = min(SOCKETS_PER_SSHD, self.count - index * SOCKETS_PER_SSHD)
            addresses = [f"127.1.{index + 1}.{n}" for n in range(1, size + 1)]
            server = harness.Sshd(addresses=addresses, allow_users=[self.user.name])
            self.stack.callback(server.close)
            server.authorize(self.user.name, self.key)
            server.start()
            self.servers.append(server)
            self.hosts.extend(Host(address, server.port, server) for address in addresses)


# ---- the service --------------------------------------------------------------------------------
class Service(benchlib.ServiceProcess):
    """``smart-proxy-dynflow-core`` with the ``script`` plugin, in a config dir of its own."""

    def __init__(
        self,
        workdir: Path,
        database: str,
        fleet: Fleet,
        foreman_url: str,
        profile_file: Path | None,
        max_starting_jobs: int | None = None,
    ) -> None:
        super().__init__(workdir)
        self.config_dir = workdir / "config"
        settings_d = self.config_dir / "settings.d"
        settings_d.mkdir(parents=True)
        self.known_hosts = workdir / "known_hosts"
        self.known_hosts.touch(mode=0o600)
        settings = {
            "listen": "127.0.0.1",
            "port": self.port,
            "database": database,
            "foreman_url": foreman_url,
            "log_file": str(workdir / "service.log"),
            "log_level": "ERROR",
        }
        (self.config_dir / "settings.yml").write_text(benchlib.yaml_settings(settings))
        rex = {
            "enabled": True,
            "ssh_identity_key_file": str(fleet.key.private),
            "known_hosts_file": str(self.known_hosts),
            "remote_working_dir": str(fleet.working_dir),
            "cockpit_integration": False,
        }
        if max_starting_jobs is not None:
            rex["max_starting_jobs"] = max_starting_jobs
        (settings_d / "remote_execution_ssh.yml").write_text(benchlib.yaml_settings(rex))
        self.profile_file = profile_file

    def command(self) -> list[str]:
        return [*benchlib.core_command(self.profile_file), "-1", "-c", str(self.config_dir)]


# ---- a fake Foreman: counts callbacks -----------------------------------------------------------
@dataclass
class Callbacks:
    expected: set[str]
    results: dict[str, Any] = field(default_factory=dict)
    arrivals: list[float] = field(default_factory=list)
    first_at: float | None = None
    last_at: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class FakeForeman:
    """Just enough HTTP/1.1 to take ``POST /foreman_tasks/api/tasks/callback`` (keep-alive)."""

    def __init__(self) -> None:
        self.port = benchlib.free_port()
        self.server: asyncio.AbstractServer | None = None
        self.waiting: list[Callbacks] = []
        self.writers: set[asyncio.StreamWriter] = set()
        self.requests = 0
        self.bad_requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self.writers):  # the service's keep-alive connections
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    def expect(self, task_ids: list[str]) -> Callbacks:
        callbacks = Callbacks(set(task_ids))
        self.waiting.append(callbacks)
        return callbacks

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.split(b"\r\n")
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                self.received(lines[0].decode("latin-1"), body)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 2\r\n\r\n{}"
                )
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            return  # closed, or the loop is shutting down
        finally:
            self.writers.discard(writer)
            writer.close()

    def received(self, request_line: str, body: bytes) -> None:
        self.requests += 1
        if "/foreman_tasks/api/tasks/callback" not in request_line:
            self.bad_requests.append(request_line)
            return
        now = time.perf_counter()
        try:
            payload = json.loads(body)
        except ValueError:
            self.bad_requests.append(f"{request_line}: not JSON")
            return
        entries = payload.get("callbacks") or [payload]
        for entry in entries:
            task_id = str((entry.get("callback") or {}).get("task_id"))
            for callbacks in self.waiting:
                if task_id in callbacks.expected and task_id not in callbacks.results:
                    callbacks.results[task_id] = entry.get("data")
                    callbacks.arrivals.append(now)
                    if callbacks.first_at is None:
                        callbacks.first_at = now
                    if len(callbacks.results) == len(callbacks.expected):
                        callbacks.last_at = now
                        callbacks.done.set()


def failures_of(results: dict[str, Any]) -> tuple[int, str | None]:
    """How many callbacks do not say exit status 0, and what one of them says."""
    bad = 0
    example = None
    for task_id, data in results.items():
        status = (data or {}).get("exit_status")
        if str(status) != "0":
            bad += 1
            if example is None:
                outputs = [
                    str(r.get("output", "")).strip()
                    for r in (data or {}).get("result") or []
                    if isinstance(r, dict)
                ]
                text = " | ".join(o for o in outputs if o)[-400:]
                example = f"{task_id}: exit status {status}: {text}"
    return bad, example


# ---- HTTP helpers -------------------------------------------------------------------------------
def launch_input(hosts: list[Host], user: str, working_dir: Path) -> dict[str, Any]:
    batch: dict[str, Any] = {}
    for host in hosts:
        key = str(uuid.uuid4())
        batch[key] = {
            "action_class": RUN_SCRIPT,
            "action_input": {
                "hostname": host.address,
                "ssh_port": host.port,
                "ssh_user": user,
                "script": "true",
                "effective_user": user,
                "cleanup_working_dirs": True,
                "remote_working_dir": str(working_dir),
                "callback": {"task_id": key, "step_id": 3},
            },
        }
    return batch


async def launch(client: httpx.AsyncClient, batch: dict[str, Any]) -> dict[str, Any]:
    answer = await client.post("/tasks/launch", json={"operation": "ssh", "input": batch})
    if answer.status_code != 200:
        raise RuntimeError(f"POST /tasks/launch: {answer.status_code} {answer.text[:300]}")
    result: dict[str, Any] = answer.json()
    if (result.get("parent") or {}).get("result") != "success":
        raise RuntimeError(f"batch launch failed: {result}")
    return result


# ---- stages -------------------------------------------------------------------------------------
async def negotiated(fleet: Fleet, host: Host, workdir: Path) -> dict[str, str]:
    """Connect once with the service's own client code; what did asyncssh negotiate?"""
    import asyncssh.connection as asyncssh_connection

    from smart_proxy_remote_execution_ssh.connection import connect
    from smart_proxy_remote_execution_ssh.known_hosts import KnownHosts
    from smart_proxy_remote_execution_ssh.options import ScriptOptions

    settings = {
        "ssh_identity_key_file": str(fleet.key.private),
        "known_hosts_file": str(workdir / "probe_known_hosts"),
    }
    options = ScriptOptions.from_input(
        {
            "hostname": host.address,
            "ssh_port": host.port,
            "ssh_user": fleet.user.name,
            "script": "true",
        },
        settings,
    )
    seen: list[str] = []
    original = asyncssh_connection.get_kex  # type: ignore[attr-defined]

    def spy(conn: Any, alg: bytes) -> Any:
        seen.append(alg.decode())
        return original(conn, alg)

    asyncssh_connection.get_kex = spy  # type: ignore[attr-defined]
    try:
        conn = await connect(options, KnownHosts.from_settings(settings))
    finally:
        asyncssh_connection.get_kex = original  # type: ignore[attr-defined]
    try:
        host_key = conn.get_server_host_key()
        return {
            "kex": seen[0] if seen else "unknown",
            "cipher": str(conn.get_extra_info("send_cipher")),
            "host_key": host_key.get_algorithm() if host_key is not None else "unknown",
            "server_version": str(conn.get_extra_info("server_version")),
        }
    finally:
        conn.close()
        await conn.wait_closed()


async def stage_floor(
    fleet: Fleet, hosts: list[Host], kex: str, store: str, timeout: float
) -> dict[str, Any]:
    """The same N sessions with the OpenSSH client, ``FLOOR_PARALLEL`` at a time."""
    slots = asyncio.Semaphore(FLOOR_PARALLEL)
    failures: list[str] = []

    async def one(host: Host) -> None:
        argv = host.server.ssh_argv(
            fleet.user.name,
            "true",
            identity=fleet.key,
            address=host.address,
            options=[f"KexAlgorithms={kex}", "ControlMaster=no"],
        )
        async with slots:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            _, stderr = await proc.communicate()
        if proc.returncode != 0:
            failures.append(f"{host.address}:{host.port}: exit {proc.returncode} {stderr[-300:]!r}")

    meter = CpuMeter(None)
    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(one(host) for host in hosts)), timeout)
    elapsed = time.perf_counter() - started
    cpu = meter.report(elapsed, len(hosts), "client")
    line = figure_line(
        "openssh_floor_hosts_per_s",
        len(hosts) / elapsed,
        store,
        hosts=len(hosts),
        parallel=FLOOR_PARALLEL,
        kex=kex,
        seconds=round(elapsed, 3),
        failures=len(failures),
        **cpu,
        host_cpus=os.cpu_count(),
    )
    if failures:
        line["first_failure"] = failures[0]
    return line


async def wait_callbacks(callbacks: Callbacks, service: Service, timeout: float) -> None:
    """Until every expected callback arrived; fails early when the service died."""
    assert service.proc is not None
    deadline = time.monotonic() + timeout
    while not callbacks.done.is_set():
        if service.proc.poll() is not None:
            raise RuntimeError(f"{PROG} exited with {service.proc.returncode}: {service.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{len(callbacks.results)} of {len(callbacks.expected)} callbacks "
                f"within {timeout:.0f} s"
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(callbacks.done.wait(), 0.5)


@dataclass
class Samples:
    rss_peak_kb: int = 0
    running_peak: int = 0
    rss_samples: int = 0
    count_samples: int = 0
    count_errors: int = 0


async def sample_rss(proc: psutil.Process, samples: Samples, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(psutil.Error):
            samples.rss_peak_kb = max(samples.rss_peak_kb, proc.memory_info().rss // 1024)
            samples.rss_samples += 1
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_INTERVAL)


async def sample_running(port: int, samples: Samples, stop: asyncio.Event) -> None:
    async with benchlib.RawConnection(port) as raw:
        while not stop.is_set():
            try:
                answer = await raw.get_json("/tasks/count?state=running")
                samples.running_peak = max(samples.running_peak, int(answer["count"]))
                samples.count_samples += 1
            except (RuntimeError, ValueError, KeyError):
                samples.count_errors += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_INTERVAL)


async def stage_rex(
    fleet: Fleet,
    service: Service,
    foreman: FakeForeman,
    hosts: list[Host],
    warmup: Host,
    kex: str,
    store: str,
    timeout: float,
) -> list[dict[str, Any]]:
    assert service.proc is not None
    proc = psutil.Process(service.proc.pid)
    cold_rss_kb = proc.memory_info().rss // 1024
    user = fleet.user.name
    limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)
    async with httpx.AsyncClient(base_url=service.url, limits=limits, timeout=timeout) as client:
        # A warm-up job on a pair of its own: lazy imports, first queries, the HTTP client.
        warm_batch = launch_input([warmup], user, fleet.working_dir)
        warm = foreman.expect(list(warm_batch))
        await launch(client, warm_batch)
        await wait_callbacks(warm, service, timeout)
        bad, example = failures_of(warm.results)
        if bad:
            raise RuntimeError(f"the warm-up job failed: {example}")
        await asyncio.sleep(0.5)
        idle_rss_kb = proc.memory_info().rss // 1024

        batch = launch_input(hosts, user, fleet.working_dir)
        body_bytes = len(json.dumps({"operation": "ssh", "input": batch}))
        callbacks = foreman.expect(list(batch))
        samples = Samples(rss_peak_kb=idle_rss_kb)
        stop = asyncio.Event()
        samplers = [
            asyncio.create_task(sample_rss(proc, samples, stop)),
            asyncio.create_task(sample_running(service.port, samples, stop)),
        ]
        meter = CpuMeter(proc)
        try:
            started = time.perf_counter()
            await launch(client, batch)
            launched = time.perf_counter() - started
            await wait_callbacks(callbacks, service, timeout)
            assert callbacks.last_at is not None and callbacks.first_at is not None
            elapsed = callbacks.last_at - started
            cpu = meter.report(elapsed, len(hosts), "service")
        finally:
            stop.set()
            await asyncio.gather(*samplers, return_exceptions=True)
    failures, example = failures_of(callbacks.results)
    rate = len(hosts) / elapsed
    rex_extra: dict[str, Any] = {
        "hosts": len(hosts),
        "kex": kex,
        "seconds": round(elapsed, 3),
        "launch_response_ms": round(launched * 1000, 1),
        "launch_body_kb": round(body_bytes / 1024, 1),
        "first_callback_s": round(callbacks.first_at - started, 3),
        # when the callbacks arrived (seconds after the launch): a steady stream or a burst
        "callback_p10_p50_p90_s": [
            round(callbacks.arrivals[int(q * (len(callbacks.arrivals) - 1))] - started, 3)
            for q in (0.1, 0.5, 0.9)
        ],
        "callbacks": len(callbacks.results),
        "failures": failures,
        **cpu,
        "service_cpu_cores": round(cpu["service_cpu_s"] / elapsed, 2),
        "sshd_instances": len(fleet.servers),
        "host_cpus": os.cpu_count(),
    }
    if example is not None:
        rex_extra["first_failure"] = example
    if foreman.bad_requests:
        rex_extra["unexpected_requests"] = foreman.bad_requests[:3]
    hwm = service.peak_rss_kb()
    peak_kb = max(samples.rss_peak_kb, hwm or 0)
    # running plans include the batch parent while it waits for its children
    running = max(min(samples.running_peak, len(hosts)), 1)
    per_host = max(samples.rss_peak_kb - idle_rss_kb, 0) / running
    memory = {
        "idle_rss_mb": round(idle_rss_kb / 1024, 1),
        "cold_rss_mb": round(cold_rss_kb / 1024, 1),
        "sampled_peak_rss_mb": round(samples.rss_peak_kb / 1024, 1),
        "peak_running_plans": samples.running_peak,
        "rss_samples": samples.rss_samples,
        "count_samples": samples.count_samples,
    }
    return [
        figure_line("rex_hosts_per_s", rate, store, **rex_extra),
        figure_line(
            "service_peak_rss_mb",
            peak_kb / 1024,
            store,
            vm_hwm_mb=round((hwm or 0) / 1024, 1),
            **memory,
        ),
        # a positive value even when nothing grew measurably
        figure_line(
            "service_kb_per_concurrent_host",
            max(per_host, 0.001),
            store,
            hosts=len(hosts),
            **memory,
        ),
    ]


# ---- ansible ------------------------------------------------------------------------------------
def ansible_venv(workdir: Path, reuse: Path | None) -> Path:
    """A virtualenv with ``ansible-core`` (never the project's); raises when pip fails."""
    venv = reuse or workdir / "ansible-venv"
    if not (venv / "bin" / "ansible").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        proc = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "ansible-core"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"pip install ansible-core: {proc.stderr.strip()[-300:]}")
    return venv


def stage_ansible(
    fleet: Fleet, hosts: list[Host], workdir: Path, venv: Path, store: str, timeout: float
) -> dict[str, Any]:
    home = workdir / "ansible"
    home.mkdir(exist_ok=True)
    control = Path(tempfile.mkdtemp(prefix="cp-", dir="/tmp"))  # short: a socket path
    inventory = home / "hosts.ini"
    lines = ["[all]"]
    lines += [
        f"h{index} ansible_host={host.address} ansible_port={host.port}"
        for index, host in enumerate(hosts)
    ]
    lines += [
        "[all:vars]",
        f"ansible_user={fleet.user.name}",
        f"ansible_ssh_private_key_file={fleet.key.private}",
        "ansible_ssh_common_args='-o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes'",
    ]
    inventory.write_text("\n".join(lines) + "\n")
    config = home / "ansible.cfg"
    config.write_text(
        f"[defaults]\nhost_key_checking = False\n[ssh_connection]\ncontrol_path_dir = {control}\n"
    )
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(config),
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    argv = [str(venv / "bin" / "ansible"), "all", "-i", str(inventory)]
    argv += ["-m", "raw", "-a", "true", "-f", str(ANSIBLE_FORKS), "-o"]
    version = subprocess.run(
        [str(venv / "bin" / "ansible"), "--version"], capture_output=True, text=True, env=env
    ).stdout.split("\n", 1)[0]
    try:
        started = time.perf_counter()
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=timeout, cwd=home
        )
        elapsed = time.perf_counter() - started
    finally:
        # the ControlPersist masters ansible left behind
        for other in psutil.process_iter(["cmdline"]):
            if str(control) in " ".join(other.info["cmdline"] or []):
                with contextlib.suppress(psutil.Error):
                    other.kill()
        shutil.rmtree(control, ignore_errors=True)
    ok = sum(
        1 for line in proc.stdout.splitlines() if " | CHANGED " in line or " | SUCCESS " in line
    )
    line = figure_line(
        "ansible_raw_true_s",
        elapsed,
        store,
        hosts=len(hosts),
        forks=ANSIBLE_FORKS,
        hosts_per_s=round(len(hosts) / elapsed, 2),
        ok=ok,
        failures=len(hosts) - ok,
        exit_code=proc.returncode,
        kex="openssh-default",
        version=version,
    )
    if proc.returncode != 0:
        line["stderr_tail"] = proc.stderr.strip()[-300:]
    return line


# ---- orchestration ------------------------------------------------------------------------------
def run_async(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


async def measure(
    fleet: Fleet,
    service: Service,
    foreman: FakeForeman,
    store: str,
    timeout: float,
) -> None:
    *hosts, warmup = fleet.hosts
    try:
        probe = await asyncio.wait_for(negotiated(fleet, warmup, service.workdir), timeout)
    except Exception as exc:  # noqa: BLE001 - reported as error lines
        for figure in ("openssh_floor_hosts_per_s", *REX_FIGURES):
            benchlib.emit(error_line(figure, store, f"probing the key exchange: {exc!r}"))
        return
    kex = probe["kex"]
    floor: dict[str, Any] | None = None
    try:
        floor = await stage_floor(fleet, hosts, kex, store, timeout)
        floor.update(cipher=probe["cipher"], host_key=probe["host_key"])
        if floor["failures"]:
            benchlib.emit(
                error_line(
                    floor["figure"],
                    store,
                    f"{floor['failures']} sessions failed: {floor.get('first_failure')}",
                )
            )
            floor = None
        else:
            benchlib.emit(floor)
    except Exception as exc:  # noqa: BLE001 - reported as an error line
        benchlib.emit(error_line("openssh_floor_hosts_per_s", store, exc))
    try:
        await foreman.start()
        lines = await stage_rex(fleet, service, foreman, hosts, warmup, kex, store, timeout)
    except Exception as exc:  # noqa: BLE001
        for figure in REX_FIGURES:
            benchlib.emit(error_line(figure, store, exc))
        return
    finally:
        await foreman.stop()
    rex = lines[0]
    benchlib.emit(rex)
    if floor is not None:
        benchlib.emit(
            figure_line(
                "rex_vs_floor_ratio",
                rex["value"] / floor["value"],
                store,
                rex_hosts_per_s=rex["value"],
                openssh_floor_hosts_per_s=floor["value"],
                kex=kex,
                hosts=len(hosts),
            )
        )
    else:
        benchlib.emit(error_line("rex_vs_floor_ratio", store, "no floor figure"))
    for line in lines[1:]:
        benchlib.emit(line)


def run(args: argparse.Namespace, hosts: int, timeout: float) -> None:
    store = args.store
    database_name: str | None = None
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rex-bench-")))
        if store == STORE_PG:
            try:
                database_name = pgdb.create(PG_PREFIX)
            except Exception as exc:  # noqa: BLE001 - any failure to reach the server skips it
                reason = f"PostgreSQL at {pgdb.PG_HOST}:{pgdb.PG_PORT} unreachable: {exc!r}"
                for figure in ("openssh_floor_hosts_per_s", *REX_FIGURES):
                    benchlib.emit({"figure": figure, "skipped": reason, "store": store})
                return
            stack.callback(pgdb.drop, database_name)
            database = pgdb.url(database_name, "postgresql")
        else:
            database = str(workdir / "dynflow.sqlite")
        fleet = Fleet(hosts + 1, stack)
        try:
            fleet.setup()
        except Exception as exc:  # noqa: BLE001
            for figure in ("openssh_floor_hosts_per_s", *REX_FIGURES):
                benchlib.emit(error_line(figure, store, exc))
            return
        profile_file = None
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            profile_file = (args.profile / f"rex-{store}-service.pstats").resolve()
        foreman = FakeForeman()
        service = Service(
            workdir, database, fleet, foreman.url, profile_file, args.max_starting_jobs
        )
        stack.callback(service.stop)
        try:
            service.start()
        except Exception as exc:  # noqa: BLE001
            for figure in ("openssh_floor_hosts_per_s", *REX_FIGURES):
                benchlib.emit(error_line(figure, store, exc))
            return
        run_async(measure(fleet, service, foreman, store, timeout))
        service.stop()
        if args.ansible:
            try:
                venv = ansible_venv(workdir, args.ansible_venv)
            except Exception as exc:  # noqa: BLE001 - no ansible: a skipped line
                benchlib.emit({"figure": "ansible_raw_true_s", "skipped": str(exc), "store": store})
            else:
                try:
                    line = stage_ansible(fleet, fleet.hosts[:-1], workdir, venv, store, timeout)
                    benchlib.emit(line)
                except Exception as exc:  # noqa: BLE001
                    benchlib.emit(error_line("ansible_raw_true_s", store, exc))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="SSH remote execution benchmark (JSON lines)")
    parser.add_argument("--store", choices=[STORE_SQLITE, STORE_PG], default=STORE_SQLITE)
    parser.add_argument("--quick", action="store_true", help="20 hosts, no ansible: a smoke run")
    parser.add_argument("--hosts", type=int, default=None, help="hosts (default 500)")
    parser.add_argument("--timeout", type=float, default=None, help="per stage, in seconds")
    parser.add_argument("--profile", type=Path, default=None, help="cProfile the service here")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--ansible", dest="ansible", action="store_true", default=None)
    group.add_argument("--no-ansible", dest="ansible", action="store_false")
    parser.add_argument(
        "--ansible-venv", type=Path, default=None, help="a virtualenv to install ansible-core in"
    )
    parser.add_argument(
        "--max-starting-jobs",
        type=int,
        default=None,
        help="the plugin's max_starting_jobs setting (default: the plugin's default)",
    )
    args = parser.parse_args(argv)
    hosts = args.hosts or (20 if args.quick else 500)
    if hosts < 1:
        parser.error("--hosts must be at least 1")
    if args.ansible is None:
        args.ansible = not args.quick
    timeout = args.timeout or (60.0 if args.quick else 600.0)
    signal.signal(signal.SIGTERM, _terminated)
    run(args, hosts, timeout)


def _terminated(signum: int, frame: Any) -> None:
    """SIGTERM unwinds like Ctrl-C (users, sshd instances and temp dirs are removed); a
    second one does not interrupt that."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(128 + signum)


if __name__ == "__main__":
    main()
